//! `kappa-engine`: the shard-nothing runtime on top of `kappa-storage`, and its embedded API.
//!
//! `Engine::builder().data_dir(..).shards(..).build()` starts one pinned glommio executor per shard
//! (one per CPU this process may use by default). Each partition lives on exactly one shard, chosen
//! by a stable hash of topic and partition; the shard owns the partition's log and serves appends,
//! tail delivery and queries for it, with no locks on the data path. Programs reach shards through
//! bounded channels: a `Producer` (`Send + Clone`, blocking or async, with backpressure) and
//! `Consumer`s that follow a partition's live tail. Code that runs on a shard
//! (`Engine::run_on_partition`) reads records zero-copy, through a read-only log (`ReadOnlyLog`).
//!
//! Views, replay and the network front ends build on this (see `ARCHITECTURE.md`); `kafka` is the
//! Kafka wire protocol front end (`KafkaServer`).

/// Runs `$body` with `$p` bound to the test hooks of the view version `$version`
/// (`view::probe`); expands to nothing outside tests and the `test-hooks` feature.
macro_rules! probe {
    ($version:expr, $p:ident => $body:expr) => {
        #[cfg(any(test, feature = "test-hooks"))]
        {
            let $p: &$crate::view::probe::Probes = &$version.probes;
            $body;
        }
    };
}

mod asynch;
mod clock;
mod config;
mod consumer;
mod engine;
mod error;
pub mod kafka;
pub mod lock;
#[cfg(all(test, loom))]
mod loom_models;
mod meta;
mod metrics;
mod monitor;
pub mod operator;
mod producer;
pub mod router;
pub mod shard;
mod sync;
pub mod view;
pub mod watchdog;

pub use clock::{Clock, FixedClock, SystemClock};
pub use config::{BlockingPool, EngineBuilder, EngineConfig, ReplayConfig, TopicConfig};
pub use consumer::Consumer;
pub use engine::{Engine, OpenReport, ReadOnlyLog, Truncation};
pub use error::Error;
pub use kappa_storage as storage;
pub use kappa_storage::{Durability, OwnedBatch, RecordRef, Seek};
pub use lock::DirLock;
pub use metrics::{
    ConsumerMetrics, PartitionMetrics, ReplayMetrics, ShardMetrics, ViewMetrics, WatchdogMetrics,
};
pub use producer::{
    Ack, BatchAck, PendingAck, PendingAcks, Producer, ProducerBatch, ProducerRecord, Stamped,
    DEFAULT_BATCH_SIZE,
};
pub use router::ShardId;
pub use view::{
    stored_view, Failure, Offsets, OnError, Poison, Rebuild, Row, Start, StoredView,
    VersionProgress, ViewDef, ViewHandle,
};
pub use watchdog::WatchdogConfig;
