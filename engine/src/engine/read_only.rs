//! `ReadOnlyLog`: the partition log as `Engine::run_on_partition` hands it to user code, with
//! reads, offsets and syncs but no appends.
//!
//! Why not the `PartitionLog` itself: every append on a shard goes through the request loop or
//! waits for it (`shard::accumulate::split_part`), because a request's records for one partition
//! must get contiguous offsets (the producer derives each record's offset from the first). An
//! append from a job, through `PartitionLog`'s public `append_now` or `append_records`, would
//! skip that rule and could land inside a request's records, so every later record of that
//! request would be acknowledged at an offset holding another record.

use std::rc::Rc;

use kappa_storage::{LogReader, PartitionLog, Seek};

/// A partition's log, read-only: what a job given to `Engine::run_on_partition` may do with it
/// (see the module doc for why it may not append). Reads are the log's own, zero-copy on the
/// shard; `sync` appends nothing and only waits for what is appended already.
///
/// No compile-fail test pins that appends do not compile: the type has no method that appends
/// and its log is private, which its definition shows, and a `compile_fail` doctest passes for
/// any error at all (a typo in the test included), so it would prove less than it seems.
#[derive(Clone)]
pub struct ReadOnlyLog {
    log: Rc<PartitionLog>,
}

impl ReadOnlyLog {
    pub(crate) fn new(log: Rc<PartitionLog>) -> Self {
        ReadOnlyLog { log }
    }

    /// A reader starting at `seek` (`PartitionLog::reader`).
    pub fn reader(&self, seek: Seek) -> Result<LogReader, kappa_storage::Error> {
        self.log.reader(seek)
    }

    /// The first offset still in the log (retention moves it forward).
    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The offset the next appended record will get.
    pub fn end_offset(&self) -> u64 {
        self.log.end_offset()
    }

    /// The first offset readers can see the end of: records below it are written.
    pub fn readable_end_offset(&self) -> u64 {
        self.log.readable_end_offset()
    }

    /// The end of the synced prefix: records below it survive a power cut.
    pub fn synced_end_offset(&self) -> u64 {
        self.log.synced_end_offset()
    }

    /// True once a failed write or fdatasync fenced the log.
    pub fn is_fenced(&self) -> bool {
        self.log.is_fenced()
    }

    /// Waits until records at or after `offset` are readable.
    pub async fn wait_readable(&self, offset: u64) -> Result<(), kappa_storage::Error> {
        self.log.wait_readable(offset).await
    }

    /// Waits until everything appended so far is synced. It appends nothing, so it cannot break
    /// the order of anyone's records.
    pub async fn sync(&self) -> Result<(), kappa_storage::Error> {
        self.log.sync().await
    }
}
