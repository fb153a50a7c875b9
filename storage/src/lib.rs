//! `kappa-storage`: the durable, partitioned, zero-copy log every other part of kappa stands on.
//!
//! One `PartitionLog` per (topic, partition) directory: an ordered list of segment files named by
//! their base offset, each a dense run of checksummed batch frames (`format`) holding an rkyv
//! archive of Kafka RecordBatch v2 bytes plus a per-record directory (`batch`, `kafka`). Writes go
//! through glommio DMA files (O_DIRECT over io_uring) with three durability levels and group commit;
//! reads hand out `BatchRef`s that borrow the DMA read buffers, so replay never copies a record.
//!
//! This crate is the only code that does file I/O, and it knows nothing of shards or operators.
//! Every file and directory operation goes through the seam in `io` (`Disk`, `File`): glommio DMA
//! and the blocking pool in production, `io::SimDisk` in tests. Everything async here runs on a
//! glommio executor; offline tools (`verify`, `inspect`, `repair`) use blocking calls so they work
//! without one.
//!
//! Layout of a data dir (`paths`): `DIR/topics/<topic>/<partition>/<base_offset:020>.log` with a
//! `<base_offset:020>.index` beside every sealed segment, and one `synced.wm` per partition (the
//! sync watermark, `watermark`).

pub mod batch;
mod encode;
mod error;
pub mod format;
pub mod index;
pub mod io;
pub mod kafka;
mod log;
pub mod paths;
pub mod pool;
mod reader;
pub mod repair;
pub mod scan;
mod sync;
pub use sync::Event;
pub mod verify;
pub mod watermark;

pub use batch::{BatchEncoder, BatchRef, OwnedBatch, RecordRef};
pub use error::Error;
pub use kafka::{BatchPlan, Header, ProducerInfo, Record, Records};
pub use log::{
    fsync_latency_ns, AppendInfo, AppendTicket, LogStats, PartitionLog, RecoveryReport,
    RetentionReport, SegmentInfo, TailCut,
};
pub use pool::{PoolConfig, PoolStats};
pub use reader::{
    writes_drained, writes_pending, LogReader, ReadAhead, ReadBatch, ReadBudgetStats,
    SealedSegment, Seek, SegmentReader,
};

/// How far an append has to get before it is acknowledged, and so what it survives.
///
/// | level     | acknowledged when                         | process crash | power cut |
/// |-----------|-------------------------------------------|---------------|-----------|
/// | `None`    | the frame is in the write buffer          | lost          | lost      |
/// | `Written` | the DMA write of the frame completed      | survives      | lost      |
/// | `Synced`  | an fdatasync covering the frame completed | survives      | survives  |
///
/// `Written` data is on the device (perhaps in its volatile cache) and its file size and block
/// allocation may not be durable yet: a SIGKILL keeps it, a power cut may tear or drop it. Only
/// bytes never covered by a completed fdatasync can be lost; every frame records how much of its
/// segment was synced when it was appended, and the writer bounds how many bytes are unsynced
/// (`LogConfig::unsynced_bytes_max`), which is what lets recovery tell a torn tail from
/// corruption.
///
/// Readers see frames once they are written, so by default they may see `Written` records that a
/// power cut later takes back; `LogReader::synced_only` keeps a reader to the synced prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Durability {
    /// Acknowledged once the frame is in the write buffer. Lost on a crash until written.
    None,
    /// Acknowledged once the DMA write of the frame completed: survives a process crash, not a
    /// power cut.
    Written,
    /// Acknowledged after an fdatasync covering the frame: survives a power cut. Concurrent
    /// appends share one fdatasync (group commit).
    Synced,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Durability::None),
            "written" => Ok(Durability::Written),
            "synced" => Ok(Durability::Synced),
            other => Err(format!("unknown durability {other:?}: expected none, written or synced")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::None => "none",
            Durability::Written => "written",
            Durability::Synced => "synced",
        })
    }
}

/// Bytes in a KiB and a MiB, for readable limits.
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// Input limits. Anything above them is refused with a typed error before a byte is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Key + value + headers of one record.
    pub record_size_bytes_max: u32,
    /// Sum of record sizes in one batch; a frame is at most this plus per-record overhead.
    pub batch_size_bytes_max: u32,
    /// Records in one batch.
    pub batch_record_count_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_size_bytes_max: MIB as u32,
            batch_size_bytes_max: 16 * MIB as u32,
            batch_record_count_max: 1 << 20,
        }
    }
}

/// Retention of whole sealed segments. `None` everywhere means keep forever (the default: views are
/// recomputed from history, so a topic that feeds views must keep it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete the oldest sealed segments while the partition is larger than this.
    pub size_bytes_max: Option<u64>,
    /// Delete sealed segments whose newest append is older than this (ms of the appenders' wall
    /// clock, as given to `PartitionLog::append_now`; not the records' event times).
    pub age_ms_max: Option<i64>,
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is sealed and a new one started when the next frame would pass this size.
    pub segment_size_bytes_max: u64,
    /// One sparse index entry at least every this many bytes of segment.
    pub index_interval_bytes: u32,
    /// Size of one DMA write buffer; full buffers are written as one I/O.
    pub write_buffer_size_bytes: usize,
    /// DMA writes in flight per partition (write-behind depth).
    pub write_in_flight_max: usize,
    /// Full buffers queued for the writer before appends wait (backpressure, bounded memory).
    pub write_queue_max: usize,
    /// Size of one DMA read during scans and replay. A read ends on a frame boundary
    /// (`reader::cursor::boundary_in`), so frames larger than half of this are read one per read
    /// whatever it is; it sets how many small frames one read takes (100-byte records in batches
    /// of 1000, ~115 KB frames: 1 MiB reads take ~9, and 256 KiB reads, 2, cost replay ~10% and
    /// twice the allocations per record).
    pub read_buffer_size_bytes: usize,
    /// Reads in flight per reader (read-ahead depth) when no shared budget bounds it (scans,
    /// consumers and fetches reading history; replay readers share the shard's
    /// `ReplayConfig::read_ahead_max` instead). Readers at the tail read from the tail cache.
    /// 8: about 4-8 MiB in flight per reader. On the virtio disk of the development machines
    /// deeper queues read slower, raw and in the log: in 7 of 7 raw sweep repeats 1 MiB reads ran
    /// slower 16 deep than 8 deep, and 8 deep slower than 4 deep (about 4 MiB in flight was the
    /// best of every size); scans of 0.54 MB frames (one per read) 8 deep against 16 deep, in
    /// rounds alternated under other builds (`kappa-bench storage --scan-shapes`, issue 11):
    /// faster in 11 of 15, per-round ratio medians 1.30, 1.21 and 1.05 over three sets of 5
    /// (0.78-1.72); two quiet alternated runs the stop before, about 1.65x.
    pub read_ahead_max: usize,
    /// Recently written buffers kept in memory per partition, so readers following the live tail
    /// get fresh frames without a disk read. 0 turns the cache off.
    pub tail_cache_buffers_max: usize,
    /// A partition whose writer has had nothing to do this long gives its tail cache back to the
    /// shard's buffer pool, so idle partitions hold no write buffer (zero keeps the cache).
    pub tail_cache_idle_release: std::time::Duration,
    /// Written-but-unsynced bytes the writer allows in the active segment. It starts a background
    /// fdatasync when half of this is unsynced and stops submitting writes rather than pass it, so
    /// even under `written` or `none` load a power cut can only tear the last
    /// `torn_tail_window_bytes()` of the active segment; damage before that is corruption.
    /// Smaller finds more corruption, larger syncs less often. At least two write buffers.
    ///
    /// On the virtio disk of the development machines an fdatasync writes back what the host
    /// cached, about 1.2-1.8 ms per MiB, and holds the device meanwhile (writes issued during it
    /// wait for it), plus a few ms of journal commit over fallocated blocks (after 8 MiB: 15-19 ms
    /// over fallocated blocks, 10-12 ms over blocks already written; README, "What holds appends
    /// below the raw write"). These syncs are what hold appends near 300 MB/s there. A 64 MiB bound was tried and measured no faster on a quiet machine
    /// (`written` 262 and 318 MB/s against 270 and 303 at 16 MiB, alternated runs) while it
    /// quadrupled what a power cut may tear, so the default stays 16 MiB.
    pub unsynced_bytes_max: u64,
    /// The active segment is extended (fallocate) this far ahead of the writer, so appends do
    /// not grow the file on every write (a file-extending O_DIRECT write is punted by io_uring to
    /// a kernel worker thread). Recovery reads at most this much zero tail. 0 turns it off.
    pub preallocate_bytes: u64,
    pub limits: Limits,
    pub retention: Retention,
    /// Where the bytes go: the real device (the default) or a simulated disk in tests.
    pub disk: io::Disk,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size_bytes_max: 256 * MIB,
            index_interval_bytes: 64 * KIB as u32,
            write_buffer_size_bytes: MIB as usize,
            write_in_flight_max: 8,
            write_queue_max: 8,
            read_buffer_size_bytes: MIB as usize,
            read_ahead_max: 8,
            tail_cache_buffers_max: 2,
            tail_cache_idle_release: std::time::Duration::from_secs(1),
            unsynced_bytes_max: 16 * MIB,
            preallocate_bytes: 8 * MIB,
            limits: Limits::default(),
            retention: Retention::default(),
            disk: io::Disk::default(),
        }
    }
}

impl LogConfig {
    /// How far before the last valid frame of an active segment damage can come from a power cut
    /// (see `log::recovery`): the unsynced bound, plus the write buffer that may be in flight
    /// beyond it, plus a block of rounding on either side.
    pub fn torn_tail_window_bytes(&self) -> u64 {
        self.unsynced_bytes_max + self.write_buffer_size_bytes as u64 + 2 * io::BLOCK_SIZE as u64
    }

    /// Rejects configurations that cannot work, with the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let block = io::BLOCK_SIZE as u64;
        let checks: [(&'static str, bool); 9] = [
            ("read_ahead_max", self.read_ahead_max > 0),
            ("segment_size_bytes_max", self.segment_size_bytes_max >= block),
            (
                "write_buffer_size_bytes",
                (self.write_buffer_size_bytes as u64).is_multiple_of(block)
                    && self.write_buffer_size_bytes > 0,
            ),
            (
                "read_buffer_size_bytes",
                (self.read_buffer_size_bytes as u64).is_multiple_of(block)
                    && self.read_buffer_size_bytes > 0,
            ),
            ("write_in_flight_max", self.write_in_flight_max > 0),
            ("write_queue_max", self.write_queue_max > 0),
            ("index_interval_bytes", self.index_interval_bytes > 0),
            (
                "unsynced_bytes_max (at least two write buffers)",
                // The largest single write (a large frame's buffer, `log::LARGE_FRAME_BUFFERS`
                // write buffers) must fit under the bound, or `Writer::bound_unsynced` could
                // never admit it (it would loop without yielding, hanging the shard).
                self.unsynced_bytes_max
                    >= (2 * self.write_buffer_size_bytes)
                        .max(log::LARGE_FRAME_BUFFERS * self.write_buffer_size_bytes)
                        as u64,
            ),
            ("preallocate_bytes", self.preallocate_bytes.is_multiple_of(block)),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(Error::Config { field });
            }
        }
        Ok(())
    }
}
