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
    #[error("view {view:?} version {version} is not served: version {served} is served instead")]
    Superseded { view: String, version: u32, served: u32 },
    #[error("view {view:?} version {version} partition {partition} stopped: {reason}")]
    ViewFailed { view: String, version: u32, partition: u32, reason: String },
    #[error(
        "view {view:?} version {version} partition {partition} needs offset {needed}, but the log \
         starts at {log_start} (retention deleted the rest); start from Start::EarliestRetained \
         to build it over the retained records only"
    )]
    ViewBeforeLogStart { view: String, version: u32, partition: u32, needed: u64, log_start: u64 },
    /// User code of a view (a filter, key or map closure, or a custom aggregate) panicked on the
    /// record at `offset`: the version is failed (and stays failed across restarts) until it is
    /// rebuilt with a fixed definition or dropped. `OnError::Skip` counts such records instead.
    #[error(
        "view {view:?} version {version} failed: its {stage} panicked on partition {partition} \
         offset {offset}: {message} (rebuild the view with a fixed definition, or drop the version)"
    )]
    Poisoned {
        view: String,
        version: u32,
        partition: u32,
        offset: u64,
        stage: String,
        message: String,
    },
    /// As `Poisoned`, but writing the failure to the view's `meta.json` failed (`source`, the
    /// I/O error): the failure is not durable, so a restart runs the record again (and fails
    /// there again, recorded then if the disk allows) instead of holding the version failed.
    #[error(
        "view {view:?} version {version} failed: its {stage} panicked on partition {partition} \
         offset {offset}: {message}; recording the failure failed, so a restart runs the record \
         again (rebuild the view with a fixed definition, or drop the version)"
    )]
    PoisonNotPersisted {
        view: String,
        version: u32,
        partition: u32,
        offset: u64,
        stage: String,
        message: String,
        #[source]
        source: std::sync::Arc<Error>,
    },
    #[error(
        "version {version} of view {view} is served in this process, but recording the swap \
         failed ({source}): after a restart the previous version would be served; retry with \
         serve_view_version once the disk is healthy"
    )]
    SwapNotPersisted {
        view: String,
        version: u32,
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// `Engine::serve_view_version` could not record the switch in the view's `meta.json`, so
    /// it did not make it: `served` is still served, now and after a restart.
    #[error(
        "version {version} of view {view} was not served: recording the switch failed \
         ({source}); version {served} is still served, in this process and after a restart; \
         retry once the disk is healthy"
    )]
    ServeNotPersisted {
        view: String,
        version: u32,
        served: u32,
        #[source]
        source: std::sync::Arc<Error>,
    },
    /// `Engine::drop_view_version` stopped the version but could not remove its files at
    /// `path`: the version stays recorded (not running, not served) with what is left of its
    /// files, as after a restart; calling `drop_view_version` again finishes the drop.
    #[error(
        "version {version} of view {view} is stopped, but removing its files at {} failed \
         ({source}): it stays recorded with its checkpoints; call drop_view_version again to \
         finish the drop",
        path.display()
    )]
    DropNotFinished {
        view: String,
        version: u32,
        path: PathBuf,
        #[source]
        source: std::sync::Arc<Error>,
    },
    #[error("the engine is shut down")]
    ShutDown,
    /// A shard's thread died (a panic outside user code): every call that needs it fails with
    /// this, promptly, until the engine is restarted.
    #[error("shard {shard} died: {message} (restart the engine)")]
    ShardDied { shard: u16, message: String },
    /// Another engine or tool owns the data dir (`DIR/.lock`).
    #[error(
        "data dir {} is in use by {}: one engine or writing tool at a time",
        dir.display(),
        pid.map_or_else(|| "another owner".to_string(), |pid| format!("process {pid}"))
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    /// A job given to `Engine::run_on_partition` panicked; the shard carries on.
    #[error("a job on topic {topic:?} partition {partition} panicked: {message}")]
    JobPanicked { topic: String, partition: u32, message: String },
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
    /// Whether trying the same call again can succeed without anything else changing first:
    /// a full request queue (`WouldBlock`), a wait that ran out of time (`Timeout`), a data dir
    /// whose owner may exit (`Locked`), and interrupted or would-block I/O. Everything else needs
    /// a change first: bad input, unknown names, a shut down engine, a dead shard (restart), a
    /// poisoned view (rebuild), a fenced log or a full disk (reopen once fixed), corruption.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::WouldBlock { .. } | Error::Timeout { .. } | Error::Locked { .. } => true,
            Error::Io { source, .. } => is_transient(source),
            Error::Storage(kappa_storage::Error::Io { source, .. }) => is_transient(source),
            _ => false,
        }
    }

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

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
    )
}
