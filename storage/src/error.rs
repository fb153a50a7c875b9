//! The storage error type: one typed enum whose fields name the file, position or limit involved.

use std::path::PathBuf;

use crate::format::FrameDefect;

/// Everything that can go wrong in the log. Bad input and damaged disks are errors, never panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("empty batch: an append needs at least one record")]
    EmptyBatch,
    #[error(
        "record {index} of the batch is {size_bytes} bytes, over the limit of {size_bytes_max}"
    )]
    RecordTooLarge { index: usize, size_bytes: u64, size_bytes_max: u64 },
    #[error("batch has {size_bytes} {what}, over the limit of {size_bytes_max}")]
    BatchTooLarge { size_bytes: u64, size_bytes_max: u64, what: &'static str },
    #[error("could not encode {what}")]
    Encode { what: &'static str },
    #[error("corrupt frame in {} at byte {position}: {defect}", path.display())]
    Corrupt { path: PathBuf, position: u64, defect: FrameDefect },
    #[error(
        "corrupt frame in {} at byte {position}: {defect}; valid frames follow at byte {valid_at} \
         (offset {valid_offset}), too far for a torn write: nothing was truncated \
         (`kappa repair` cuts the log here)",
        path.display()
    )]
    CorruptBeforeValid {
        path: PathBuf,
        position: u64,
        defect: FrameDefect,
        valid_at: u64,
        valid_offset: u64,
    },
    #[error(
        "synced data missing in {}: its valid frames end at byte {position} ({}), but the sync \
         watermark {} says bytes up to {synced} were covered by a completed fdatasync \
         (acknowledged as synced): corrupt, nothing was truncated (`kappa repair` cuts the log \
         here)",
        path.display(),
        defect.map_or_else(|| "the data ends there".to_string(), |d| d.to_string()),
        watermark.display()
    )]
    SyncedDataMissing {
        path: PathBuf,
        position: u64,
        /// What is at `position`: `None` when the data just ends (a truncated file, zeros).
        defect: Option<FrameDefect>,
        synced: u64,
        watermark: PathBuf,
    },
    #[error(
        "partition log {} is read-only after a failed {cause} on {}: nothing more is \
         acknowledged or readable until it is reopened",
        dir.display(),
        path.display()
    )]
    Fenced {
        dir: PathBuf,
        cause: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt index {}: {reason}", path.display())]
    CorruptIndex { path: PathBuf, reason: &'static str },
    #[error("offset gap in {}: expected offset {expected}, found {found}", path.display())]
    OffsetGap { path: PathBuf, expected: u64, found: u64 },
    #[error("offset {requested} is out of range: the log holds offsets {start}..{end}")]
    OffsetOutOfRange { requested: u64, start: u64, end: u64 },
    #[error("unexpected file name {} in a partition directory", path.display())]
    BadFileName { path: PathBuf },
    #[error("invalid configuration: {field}")]
    Config { field: &'static str },
    #[error("the log is closed")]
    Closed,
    #[error("io error during {op} on {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Error::Io { op, path: path.into(), source: source.into() }
    }

    /// True when a file or directory that was asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// True when the error means the disk holds damaged data (as opposed to bad input or I/O).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::CorruptBeforeValid { .. }
                | Error::SyncedDataMissing { .. }
                | Error::CorruptIndex { .. }
                | Error::OffsetGap { .. }
        )
    }

    /// The I/O error underneath, if this is one (directly, or the failure that fenced a log).
    pub fn io_source(&self) -> Option<&std::io::Error> {
        match self {
            Error::Io { source, .. } | Error::Fenced { source, .. } => Some(source),
            _ => None,
        }
    }
}
