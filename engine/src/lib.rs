//! `kappa-engine`: the shard-nothing runtime on top of `kappa-storage`.
//!
//! This crate will hold the shards (one pinned glommio executor per core), routing of records to
//! partitions, the embedded producer and consumer API, operators and materialized views,
//! checkpoints, the replay scheduler and the network front ends (see `ARCHITECTURE.md`). Today it
//! only re-exports the storage API it is built on, so that the dependency direction
//! (tools, bench, tests -> engine -> storage) is fixed from the start.

pub use kappa_storage as storage;
