//! The engine error type: typed, `Send`, naming the topic, partition, shard or file involved.

use std::path::PathBuf;

/// Everything the embedded API can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown topic {topic:?}")]
    UnknownTopic { topic: String },
    #[error("topic {topic:?} has {partitions} partitions; there is no partition {partition}")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("topic {topic:?} already exists with {partitions} partitions")]
    TopicExists { topic: String, partitions: u32 },
    #[error("topic {topic:?} is read by views {views:?}; delete those views first")]
    TopicInUse { topic: String, views: Vec<String> },
    #[error("invalid topic name {topic:?}: {reason}")]
    BadTopicName { topic: String, reason: &'static str },
    #[error("unknown view {view:?} (version {version})")]
    UnknownView { view: String, version: u32 },
    #[error("view {view:?}: {waiting_for} not reached after {waited_ms} ms")]
    Timeout { view: String, waited_ms: u64, waiting_for: String },
    #[error(
        "view {view:?} version {version} will not be served: version {served} took over first"
    )]
    Superseded { view: String, version: u32, served: u32 },
    #[error("view {view:?} version {version} partition {partition} stopped: {reason}")]
    ViewFailed { view: String, version: u32, partition: u32, reason: String },
    #[error("the engine is shut down")]
    ShutDown,
    #[error(
        "shard {shard} is busy: its request queue is full (try again, or use a blocking send)"
    )]
    WouldBlock { shard: u16 },
    #[error("invalid configuration {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("could not start shard {shard}: {reason}")]
    Start { shard: u16, reason: String },
    #[error("metadata file {}: {reason}", path.display())]
    Meta { path: PathBuf, reason: String },
    #[error("io error during {op} on {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] kappa_storage::Error),
}

impl Error {
    /// True when the disk (or the file system quota) is full.
    pub fn is_disk_full(&self) -> bool {
        let source = match self {
            Error::Io { source, .. } => source,
            Error::Storage(e) => match e.io_source() {
                Some(source) => source,
                None => return false,
            },
            _ => return false,
        };
        // ENOSPC, or its kind where the error was re-created from a stored failure.
        source.raw_os_error() == Some(28) || source.kind() == std::io::ErrorKind::StorageFull
    }
}
