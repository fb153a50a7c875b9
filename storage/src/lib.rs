//! `kappa-storage`: the durable, partitioned, zero-copy log every other part of kappa stands on.
//!
//! One `PartitionLog` per (topic, partition) directory: an ordered list of segment files named by
//! their base offset, each a dense run of checksummed batch frames (`format`) holding an rkyv
//! archive of Kafka RecordBatch v2 bytes plus a per-record directory (`batch`, `kafka`). Writes go
//! through glommio DMA files (O_DIRECT over io_uring) with three durability levels and group commit;
//! reads hand out `BatchRef`s that borrow the DMA read buffers, so replay never copies a record.
//!
//! This crate is the only code that does file I/O, and it knows nothing of shards or operators.
//! Everything async here runs on a glommio executor; offline tools (`verify`, `inspect`) use
//! plain `std::fs` so they work without one.
//!
//! Layout of a data dir (`paths`): `DIR/topics/<topic>/<partition>/<base_offset:020>.log` with a
//! `<base_offset:020>.index` beside every sealed segment.

pub mod batch;
mod error;
pub mod format;
pub mod index;
pub mod io;
pub mod kafka;
mod log;
pub mod paths;
mod reader;
pub mod scan;
mod sync;
pub mod verify;

pub use batch::{BatchEncoder, BatchRef, OwnedBatch, RecordRef};
pub use error::Error;
pub use kafka::{Header, ProducerInfo, Record};
pub use log::{
    AppendInfo, AppendTicket, LogStats, PartitionLog, RecoveryReport, RetentionReport, SegmentInfo,
};
pub use reader::{LogReader, ReadBatch, Seek};

/// How far an append has to get before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Durability {
    /// Acknowledged once the frame is in the write buffer. Lost on a crash until written.
    None,
    /// Acknowledged once the DMA write of the frame completed (on the device, maybe in its cache).
    Written,
    /// Acknowledged after an fdatasync covering the frame. Concurrent appends share one fdatasync.
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
    /// Delete sealed segments whose newest record is older than this (event time, ms).
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
    /// Size of one DMA read during scans and replay.
    pub read_buffer_size_bytes: usize,
    /// Reads in flight per reader (read-ahead depth). With ~1 MiB reads, 16 keep about 16-24 MiB in
    /// flight per reader: what this virtio disk needed for a scan to reach ~0.8-1.0 of its raw read
    /// bandwidth (8 gave 0.75-0.89). Readers at the tail read from the tail cache instead.
    pub read_ahead_max: usize,
    /// Recently written buffers kept in memory per partition, so readers following the live tail
    /// get fresh frames without a disk read. 0 turns the cache off.
    pub tail_cache_buffers_max: usize,
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
            read_ahead_max: 16,
            tail_cache_buffers_max: 2,
            limits: Limits::default(),
            retention: Retention::default(),
            disk: io::Disk::default(),
        }
    }
}

impl LogConfig {
    /// Rejects configurations that cannot work, with the field that is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        let block = io::BLOCK_SIZE as u64;
        let checks: [(&'static str, bool); 7] = [
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
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(Error::Config { field });
            }
        }
        Ok(())
    }
}
