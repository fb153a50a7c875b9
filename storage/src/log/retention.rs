//! Retention: deleting whole sealed segments past the configured size or age.

use crate::paths;
use crate::Error;

use super::{PartitionLog, RetentionReport};

impl PartitionLog {
    /// Deletes whole sealed segments beyond the configured retention. `now_ms` is the caller's
    /// clock (storage never reads one); age is measured against each segment's newest record.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, Error> {
        let retention = self.shared.config.retention;
        let mut doomed = Vec::new();
        {
            let mut st = self.shared.state.borrow_mut();
            let mut total: u64 = st.segments.iter().map(|s| s.index.size_bytes).sum();
            // Never delete the active segment, nor one the writer has not sealed yet.
            let sealed_count = st.segments.len() - 1;
            let readable_base = st.readable.segment_base;
            let mut delete = 0;
            for segment in &st.segments[..sealed_count] {
                if segment.index.base_offset >= readable_base {
                    break;
                }
                let too_big = retention.size_bytes_max.is_some_and(|max| total > max);
                let too_old = retention
                    .age_ms_max
                    .is_some_and(|max| segment.index.max_timestamp < now_ms.saturating_sub(max));
                if !(too_big || too_old) {
                    break;
                }
                total -= segment.index.size_bytes;
                delete += 1;
            }
            for segment in st.segments.drain(..delete) {
                doomed.push(segment);
            }
        }
        let mut report = RetentionReport::default();
        for segment in &doomed {
            let index_path = paths::index_path(&self.shared.dir, segment.index.base_offset);
            let disk = &self.shared.config.disk;
            disk.remove_file(&segment.path).await?;
            match disk.remove_file(&index_path).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            report.segments_deleted += 1;
            report.bytes_deleted += segment.index.size_bytes;
        }
        if !doomed.is_empty() {
            self.shared.config.disk.sync_dir(&self.shared.dir).await?;
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
