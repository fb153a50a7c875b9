//! What opening the data dir found and repaired, kept for `Engine::open_report`: recovery never
//! cuts silently, and this is the API side of the warnings it logs.

use std::path::PathBuf;

use super::Inner;

impl Inner {
    pub(super) fn report(&self) -> std::sync::MutexGuard<'_, OpenReport> {
        self.open_report.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What opening the data dir found and repaired (`Engine::open_report`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Partitions opened (at start, and by later topic creations).
    pub partitions_opened: usize,
    /// Torn tails cut from active segments: unsynced writes a crash or power cut interrupted.
    pub truncations: Vec<Truncation>,
    /// Sealed segments whose index was missing or damaged and was rebuilt by a scan.
    pub indexes_rebuilt: usize,
    /// Topic deletions a crash interrupted, finished by this start.
    pub deletions_finished: Vec<String>,
}

/// One torn tail cut from a partition's active segment when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub topic: String,
    pub partition: u32,
    /// The segment file that was cut.
    pub segment: PathBuf,
    /// The file now ends here (the first damaged byte).
    pub position: u64,
    /// The partition's end offset after the cut: the first offset dropped, if any was written.
    pub first_offset: u64,
    /// Bytes dropped (to the last non-zero byte of the file).
    pub bytes: u64,
    /// Whole valid frames found after the damage and dropped with it, and their offsets
    /// `[first, end)`: records that were written but never synced nor acknowledged as synced.
    pub frames: u64,
    pub offsets: Option<(u64, u64)>,
}

impl OpenReport {
    pub(super) fn record(
        &mut self,
        topic: &str,
        partition: u32,
        recovery: kappa_storage::RecoveryReport,
    ) {
        self.partitions_opened += 1;
        self.indexes_rebuilt += recovery.indexes_rebuilt;
        if let Some(cut) = recovery.tail_cut {
            self.truncations.push(Truncation {
                topic: topic.to_string(),
                partition,
                segment: cut.segment,
                position: cut.position,
                first_offset: cut.first_dropped_offset,
                bytes: cut.dropped_bytes,
                frames: cut.dropped_frames,
                offsets: cut.dropped_offsets,
            });
        }
    }
}
