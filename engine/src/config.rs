//! Engine and topic configuration, with the builder that starts an engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kappa_storage::{LogConfig, PoolConfig, Retention, MIB};

use crate::clock::{Clock, SystemClock};
use crate::watchdog::WatchdogConfig;
use crate::{Engine, Error};

/// How an engine runs. Every queue and buffer has a bound here.
#[derive(Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Shards (pinned executors); `None` means one per CPU in `cpus`.
    pub shards: Option<usize>,
    /// CPUs the shards are pinned to, in shard order (wrapping when there are more shards);
    /// `None` means every CPU this process may run on. Leave CPUs out to keep them for other
    /// threads (clients, an HTTP server).
    pub cpus: Option<Vec<usize>>,
    /// The live tail's latency budget. The shards' preempt timer is derived from it, so a shard
    /// busy with replay answers live work within a fraction of the budget.
    pub live_latency_budget: Duration,
    /// Requests queued per shard before producers wait (backpressure).
    pub request_queue_max: usize,
    /// Appends per shard waiting for their durability at once.
    pub appends_in_flight_max: usize,
    /// Batches buffered per consumer before the shard stops reading for it.
    pub consumer_buffer_batches_max: usize,
    /// Pinned DMA memory per shard (glommio's registered buffer pool). Reads and writes that do
    /// not fit fall back to ordinary allocations: an mmap, page faults and an munmap per buffer,
    /// which halved replay throughput of 1 KiB records at 16 MiB. 64 MiB holds the read-ahead and
    /// write buffers of several busy partitions.
    pub io_memory_bytes: usize,
    /// Segment, buffer and retention defaults for partition logs.
    pub log: LogConfig,
    /// Each shard's pool of DMA write buffers (shared by its partitions; an idle partition holds
    /// none) and the bound on what all tail caches of a shard keep.
    pub write_buffer_pool: PoolConfig,
    /// Bytes of records a shard's accumulator holds at most (`Producer::with_linger`), its spare
    /// buffers included; past it, the oldest staged batches are appended before more are staged.
    /// 64 MiB by default: 2,000 partitions of a shard (4,000 over 2 shards) staged at 32 KiB
    /// each. At 32 MiB, random keys over 4,000 partitions had their batches cut by this bound at
    /// about 16 KiB (170 records of 100 B), every write and frame costing its share again.
    pub staged_bytes_max: usize,
    /// Partitions a shard opens at once (recovery of thousands of partitions runs in parallel).
    pub open_concurrency: usize,
    /// Threads of each shard's blocking pool (glommio's `spawn_blocking`: directory listings,
    /// creates, renames, directory fsyncs, index files). One thread would serialize the
    /// namespace work of thousands of parallel partition opens.
    pub blocking_threads: usize,
    /// Where those threads run (`BlockingPool::Unbound` unless told).
    pub blocking_pool: BlockingPool,
    pub clock: Arc<dyn Clock>,
    /// Fault injection for tests: every append on every shard first sleeps this long.
    pub append_delay: Option<Duration>,
    /// Each shard's stall probe sleeps this long in a loop and records how late it wakes
    /// (`ShardMetrics::executor_stall_ns`); `None` turns it off.
    pub stall_probe_interval: Option<Duration>,
    /// How often each shard applies its partitions' retention (`Engine::apply_retention` runs it
    /// at once).
    pub retention_interval: Duration,
    /// The shards' pulse and watchdog (`crate::watchdog`): bounds how long glommio can leave a
    /// shard parked with runnable tasks, and warns about and kicks a shard that stops running.
    pub watchdog: WatchdogConfig,
    /// How a rebuild spreads over the shards and how the live-latency controller paces it.
    pub replay: ReplayConfig,
}

/// Replay as tasks on any shard, and the controller that keeps live latency inside its budget
/// (`shard::replay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Split a mergeable view's history into range tasks spread over every shard (else each
    /// partition replays whole on its own shard).
    pub split: bool,
    /// The smallest range task, in records: below twice this a partition replays whole.
    pub task_records_min: u64,
    /// Range tasks per partition rebuild and shard (so a slow shard does not hold up the merge).
    pub tasks_per_shard: usize,
    /// The most range tasks one shard folds at once (the controller's ceiling).
    pub concurrency_max: usize,
    /// The most disk reads all replay readers of a shard keep in flight together (the
    /// controller's ceiling; one while a live write is in flight: `kappa_storage::ReadAhead`).
    pub read_ahead_max: usize,
    /// The replay task queue's most shares (the live queue has 1000).
    pub shares_max: usize,
    /// Replay on a shard that has replay work is never slowed below this rate (records per
    /// second): the controller stops decreasing, so replay does not starve.
    pub min_records_per_s: u64,
    /// The most of each duty period replay may be made to sleep, percent (at most
    /// `shard::replay::DUTY_MAX_PERCENT`, 95): once the controller is at its floor and live
    /// latency is still over budget, replay tasks rest part of every 10 ms so the shard's CPU
    /// goes to the io_uring workers and client threads. 0 turns the duty cycle off.
    pub duty_max_percent: u32,
    /// Move the duty by trials (`shard::replay`): a higher duty is kept only while its pause
    /// lowers the live p99, so a rebuild keeps its rate when the disk, not replay, is what is
    /// slow. Off: the duty rises on every tick at the floor and over budget.
    pub duty_trials: bool,
    /// While a live log write waits on the shard, replay sleeps briefly every
    /// `shard::replay::IO_TURN_EVERY` so glommio submits the write and reaps its completion at
    /// once, not at the next preempt timer (`ReplayControl::io_turn`). Off only to measure what
    /// it buys.
    pub io_turns: bool,
    /// The scheduler slice each shard thread asks the kernel for (`shard::slice`; Linux 6.12+,
    /// no privilege): a shard busy with replay then waits less for its CPU behind other
    /// processes. `None`: the kernel's default.
    pub kernel_slice: Option<std::time::Duration>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            split: true,
            task_records_min: 64 * 1024,
            tasks_per_shard: 2,
            concurrency_max: 2,
            read_ahead_max: 8,
            shares_max: 1000,
            min_records_per_s: 20_000,
            duty_max_percent: 90,
            duty_trials: true,
            io_turns: true,
            kernel_slice: None,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("data_dir", &self.data_dir)
            .field("shards", &self.shards)
            .field("live_latency_budget", &self.live_latency_budget)
            .field("request_queue_max", &self.request_queue_max)
            .field("appends_in_flight_max", &self.appends_in_flight_max)
            .finish_non_exhaustive()
    }
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            shards: None,
            cpus: None,
            live_latency_budget: Duration::from_millis(5),
            request_queue_max: 1024,
            appends_in_flight_max: 1024,
            consumer_buffer_batches_max: 16,
            io_memory_bytes: 64 * MIB as usize,
            log: LogConfig::default(),
            write_buffer_pool: PoolConfig::default(),
            staged_bytes_max: 64 * MIB as usize,
            open_concurrency: 64,
            blocking_threads: 4,
            blocking_pool: BlockingPool::Unbound,
            clock: Arc::new(SystemClock),
            append_delay: None,
            stall_probe_interval: Some(Duration::from_millis(1)),
            retention_interval: Duration::from_secs(60),
            watchdog: WatchdogConfig::default(),
            replay: ReplayConfig::default(),
        }
    }

    /// The preempt timer: a fifth of the live budget, between 100 µs and 10 ms (glommio's default
    /// of 100 ms would make a busy shard deaf for 100 ms).
    pub fn preempt_timer(&self) -> Duration {
        (self.live_latency_budget / 5).clamp(Duration::from_micros(100), Duration::from_millis(10))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("request_queue_max", self.request_queue_max),
            ("appends_in_flight_max", self.appends_in_flight_max),
            ("consumer_buffer_batches_max", self.consumer_buffer_batches_max),
            ("staged_bytes_max", self.staged_bytes_max),
            ("open_concurrency", self.open_concurrency),
            ("blocking_threads", self.blocking_threads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::Config { field, reason: "must be at least 1".into() });
            }
        }
        if self.cpus.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Config {
                field: "cpus",
                reason: "must name at least one CPU".into(),
            });
        }
        if self.shards == Some(0) {
            return Err(Error::Config { field: "shards", reason: "must be at least 1".into() });
        }
        if self.io_memory_bytes < 512 * 1024 {
            return Err(Error::Config {
                field: "io_memory_bytes",
                reason: "glommio needs at least 512 KiB".into(),
            });
        }
        let replay = [
            ("replay.task_records_min", self.replay.task_records_min as usize),
            ("replay.tasks_per_shard", self.replay.tasks_per_shard),
            ("replay.concurrency_max", self.replay.concurrency_max),
            ("replay.read_ahead_max", self.replay.read_ahead_max),
            ("replay.shares_max", self.replay.shares_max),
        ];
        for (field, value) in replay {
            if value == 0 {
                return Err(Error::Config { field, reason: "must be at least 1".into() });
            }
        }
        if self.stall_probe_interval.is_some_and(|i| i < Duration::from_micros(100)) {
            return Err(Error::Config {
                field: "stall_probe_interval",
                reason: "must be at least 100 µs (or None)".into(),
            });
        }
        if self.retention_interval < Duration::from_millis(10) {
            return Err(Error::Config {
                field: "retention_interval",
                reason: "must be at least 10 ms".into(),
            });
        }
        self.watchdog.validate()?;
        self.log.validate()?;
        Ok(())
    }
}

/// Where a shard's blocking-pool threads run. Their work (a checkpoint's encoding, directory
/// fsyncs, renames, index files) is CPU and kernel time; on the shard's own CPU it competes
/// with the shard. `kappa-bench stall --blocking-pool` measures the three (ARCHITECTURE.md,
/// Stalls: no difference beyond the noise of a loaded 2-CPU machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockingPool {
    /// Not pinned (the default): the threads keep the affinity of the thread that started the
    /// engine, and the scheduler places them.
    Unbound,
    /// On CPUs that run no shard if this process has any, else on every CPU but the shard's own,
    /// else (one CPU) unbound.
    OtherCpus,
    /// On the shard's own CPU (glommio's default placement).
    ShardCpu,
}

/// Starts an engine: `Engine::builder().data_dir(..).shards(..).build()`.
pub struct EngineBuilder {
    config: EngineConfig,
}

impl EngineBuilder {
    pub(crate) fn new() -> Self {
        EngineBuilder { config: EngineConfig::new("kappa-data") }
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.shards = Some(shards);
        self
    }
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.config.cpus = Some(cpus);
        self
    }
    pub fn blocking_pool(mut self, pool: BlockingPool) -> Self {
        self.config.blocking_pool = pool;
        self
    }
    pub fn live_latency_budget(mut self, budget: Duration) -> Self {
        self.config.live_latency_budget = budget;
        self
    }
    pub fn request_queue_max(mut self, requests: usize) -> Self {
        self.config.request_queue_max = requests;
        self
    }
    pub fn appends_in_flight_max(mut self, appends: usize) -> Self {
        self.config.appends_in_flight_max = appends;
        self
    }
    pub fn log_config(mut self, log: LogConfig) -> Self {
        self.config.log = log;
        self
    }
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }
    pub fn io_memory_bytes(mut self, bytes: usize) -> Self {
        self.config.io_memory_bytes = bytes;
        self
    }
    pub fn append_delay(mut self, delay: Duration) -> Self {
        self.config.append_delay = Some(delay);
        self
    }
    pub fn replay(mut self, replay: ReplayConfig) -> Self {
        self.config.replay = replay;
        self
    }
    pub fn stall_probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.stall_probe_interval = interval;
        self
    }
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.config.retention_interval = interval;
        self
    }
    pub fn watchdog(mut self, watchdog: WatchdogConfig) -> Self {
        self.config.watchdog = watchdog;
        self
    }
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }
    pub fn build(self) -> Result<Engine, Error> {
        Engine::start(self.config)
    }
}

/// A topic's definition, persisted in `DIR/meta/topics/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    /// `None`: the engine's default.
    pub segment_size_bytes_max: Option<u64>,
    /// Retention of whole sealed segments; `None` keeps everything (the default: views are
    /// recomputed from history).
    pub retention_bytes_max: Option<u64>,
    pub retention_ms_max: Option<i64>,
    /// How many partitions keyed records are spread over: the partition count the topic was
    /// created with. `Engine::add_partitions` sets it (once) and never changes it again, so a
    /// key stays in the partition it always went to, and its records stay in order there. The
    /// added partitions take unkeyed records (round robin over every partition) and records sent
    /// to a chosen partition. `None`: every partition (the topic was never grown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_partitions: Option<u32>,
}

impl TopicConfig {
    pub fn new(partitions: u32) -> Self {
        TopicConfig {
            partitions,
            segment_size_bytes_max: None,
            retention_bytes_max: None,
            retention_ms_max: None,
            key_partitions: None,
        }
    }

    /// The partitions keyed records route over (see `key_partitions`).
    pub fn key_partition_count(&self) -> u32 {
        self.key_partitions.unwrap_or(self.partitions).clamp(1, self.partitions.max(1))
    }

    pub(crate) fn log_config(&self, base: &LogConfig) -> LogConfig {
        let mut config = base.clone();
        if let Some(size) = self.segment_size_bytes_max {
            config.segment_size_bytes_max = size;
        }
        config.retention = Retention {
            size_bytes_max: self.retention_bytes_max,
            age_ms_max: self.retention_ms_max,
        };
        config
    }
}
