//! Retention: deleting whole sealed segments past the configured size or age, never past a floor
//! the caller pins (records a running view has not folded yet).
//!
//! Age is the segment's append time (`SegmentIndex::retention_time_ms`: the appender's clock,
//! kept in every frame so an index rebuilt by a scan has it too), never producers' event times;
//! a segment whose append time is unknown (frames older than format version 3) is kept by age
//! retention and left to size retention.
//!
//! Segments go oldest first, one at a time: unlink the segment, unlink its index, fsync the
//! directory. So a power cut in the middle leaves the log a suffix of itself (at worst one segment
//! back, or a sealed segment without its index, which open rebuilds), never a gap.
//!
//! A reader on a deleted segment gets `Error::OffsetOutOfRange` with the new start offset (it is
//! not pinned: a plain reader that falls behind retention is told so, and never spins).

use crate::paths;
use crate::Error;

use super::{PartitionLog, RetentionReport};

impl PartitionLog {
    /// Deletes whole sealed segments beyond the configured retention, but never a segment holding
    /// an offset at or after `keep_from_offset` (pass `u64::MAX` for no floor). `now_ms` is the
    /// caller's clock (storage never reads one); age is measured from each segment's newest append
    /// (`append_now`'s time), not from the records' event times.
    pub async fn apply_retention(
        &self,
        now_ms: i64,
        keep_from_offset: u64,
    ) -> Result<RetentionReport, Error> {
        let retention = self.shared.config.retention;
        let mut report = RetentionReport::default();
        loop {
            let doomed = {
                let mut st = self.shared.state.borrow_mut();
                let total: u64 = st.segments.iter().map(|s| s.index.size_bytes).sum();
                // Never the active segment, nor one the writer has not sealed yet.
                let oldest = &st.segments[0];
                let sealed =
                    st.segments.len() > 1 && oldest.index.base_offset < st.readable.segment_base;
                let too_big = retention.size_bytes_max.is_some_and(|max| total > max);
                // A segment of unknown append time (written before frames carried it) is
                // never too old: kept, rather than judged by producers' event times.
                let too_old = retention.age_ms_max.is_some_and(|max| {
                    oldest.index.retention_time_ms().is_some_and(|t| t < now_ms.saturating_sub(max))
                });
                let pinned = oldest.index.next_offset > keep_from_offset;
                if !sealed || pinned || !(too_big || too_old) {
                    break;
                }
                // Out of the log before its file goes, so no new reader opens it.
                st.segments.remove(0)
            };
            self.shared.changed.notify();
            let disk = &self.shared.config.disk;
            let index_path = paths::index_path(&self.shared.dir, doomed.index.base_offset);
            disk.remove_file(&doomed.path).await?;
            match disk.remove_file(&index_path).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            disk.sync_dir(&self.shared.dir).await?;
            report.segments_deleted += 1;
            report.bytes_deleted += doomed.index.size_bytes;
        }
        if report.segments_deleted > 0 {
            tracing::info!(
                dir = %self.shared.dir.display(),
                segments = report.segments_deleted,
                bytes = report.bytes_deleted,
                "retention deleted sealed segments"
            );
        }
        report.start_offset = self.start_offset();
        Ok(report)
    }
}
