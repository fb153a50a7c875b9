//! Materialized views: one pipeline for the live tail and for history, checkpoints, and rebuild by
//! replay with an atomic version swap.
//!
//! A view version has one partition per topic partition, living on the shard that owns the topic
//! partition (`runner`). A version starts in the shard's `replay` queue, reading the log from its
//! start (or a checkpoint); when it reaches the readable end it records the exact offset, and goes
//! on in the `live` queue following the tail with the same code. When every partition of a rebuilt
//! version has caught up, the engine's served version flips to it in one atomic store: a query reads
//! the served version once and asks every partition for that version, so it never mixes versions,
//! and the old version keeps running for rollback until it is dropped.
//!
//! What a view computes, record by record and query by query, is specified in `docs/semantics.md`;
//! the tests compare the engine with a reference model written from that page.

pub mod cut;
pub mod def;
pub mod handle;
#[cfg(any(test, feature = "test-hooks"))]
pub mod probe;
pub(crate) mod runner;
pub(crate) mod split;
pub mod state;
pub mod wait;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use crate::sync::Mutex;

use crossbeam_utils::CachePadded;
use kappa_storage::io::Disk;

use crate::operator::{AggState, Aggregate, Window};
use crate::Error;
pub use def::{OnError, Start, ViewDef};
pub use handle::{Rebuild, ViewHandle};
pub use runner::Activity;
pub use state::{Cell, Counters, PartitionState, Poison};
pub use wait::Offsets;

/// One row of a view: a (key, window) group and its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: Vec<u8>,
    pub window_start: i64,
    pub window_end: i64,
    /// The aggregate's result (count, sum, mean, estimate, ...).
    pub value: f64,
    /// The full aggregate state.
    pub state: AggState,
}

/// Where one partition of a view version stands.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionProgress {
    pub partition: u32,
    /// The next offset the view will consume.
    pub next_offset: u64,
    /// The partition's readable end.
    pub end_offset: u64,
    pub lag: u64,
    pub watermark: i64,
    pub live: bool,
    /// The offset at which this partition caught up and started following the tail.
    pub caught_up_at: Option<u64>,
    pub counters: Counters,
    /// Archive bytes of the batches consumed.
    pub bytes_consumed: u64,
    /// Records per second since this version started on the shard.
    pub rate_records_s: f64,
    /// Seconds to catch up at that rate (0 when live).
    pub eta_s: f64,
    pub error: Option<String>,
    /// Set when this partition stopped on a record its user code panicked on.
    pub failure: Option<Failure>,
    /// What the partition's task is doing or waiting on right now.
    pub activity: Activity,
    /// Times the stall check (`monitor.rs`) saw this partition behind and not moving for a second.
    pub stalls: u64,
    /// Range tasks of its replay (on any shard) not merged yet: the replay's concurrency.
    pub replay_tasks: usize,
    /// The next offset of the newest checkpoint this partition wrote and synced (or resumed from):
    /// what a restart resumes from at least.
    pub checkpointed: Option<u64>,
    /// The next offset of the checkpoint this partition resumed from at its start, if any: the
    /// records before it were not replayed.
    pub resumed_from: Option<u64>,
    /// The owning shard's replay controller when the partition answered: its live p99 (append
    /// and tail delivery) beside the budget, the budget burn, replay concurrency and rate.
    pub shard_replay: crate::metrics::ReplayMetrics,
}

/// Why a view version stopped: the partition, and for a poison record (user code panicked) its
/// offset, the step that panicked and the panic message. Poison failures are kept in the view's
/// `meta.json`, so a restart does not run the record again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub partition: u32,
    /// The record's offset; `None` when the partition stopped on something else (a read error).
    pub offset: Option<u64>,
    /// `filter`, `key function`, `map` or `custom aggregate`; `None` for other errors.
    pub stage: Option<String>,
    pub message: String,
    /// Set when recording this poison failure in the view's `meta.json` failed (the error, as
    /// text): a restart does not know of it and runs the record again (it fails again there and
    /// is recorded then, if the disk lets it). A later write of the view's metadata (a rebuild,
    /// a rollback) still carries the failure and may record it. Never stored: a stored failure
    /// was recorded.
    #[serde(skip)]
    pub not_persisted: Option<String>,
}

/// A version's progress over all partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionProgress {
    pub version: u32,
    pub revision: String,
    pub served: bool,
    pub partitions: Vec<PartitionProgress>,
}

impl VersionProgress {
    pub fn lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
    pub fn consumed(&self) -> u64 {
        self.partitions.iter().map(|p| p.counters.consumed).sum()
    }
    pub fn caught_up(&self) -> bool {
        self.partitions.iter().all(|p| p.live)
    }
    pub fn rate_records_s(&self) -> f64 {
        self.partitions.iter().map(|p| p.rate_records_s).sum()
    }
    /// Range tasks not merged yet over all partitions.
    pub fn replay_tasks(&self) -> usize {
        self.partitions.iter().map(|p| p.replay_tasks).sum()
    }
    /// The worst live p99 (append or tail delivery, microseconds) of the shards that own the
    /// version's partitions, over the last second.
    pub fn live_p99_us(&self) -> u64 {
        self.partitions.iter().map(|p| p.shard_replay.live_p99_us).max().unwrap_or(0)
    }
    pub fn eta_s(&self) -> f64 {
        self.partitions.iter().map(|p| p.eta_s).fold(0.0, f64::max)
    }
}

/// A view version as the engine knows it (shared with the shards that run its partitions).
pub(crate) struct Version {
    pub(crate) view: Arc<str>,
    pub(crate) number: u32,
    pub(crate) def: Arc<ViewDef>,
    pub(crate) partitions: u32,
    /// Partitions that caught up with the tail.
    pub(crate) caught_up: AtomicU32,
    /// Set when every partition caught up: the served version moves here (if it is a rebuild).
    pub(crate) entry: Arc<Entry>,
    pub(crate) dir: PathBuf,
    /// Per partition, the next offset to fold (published by the shard after every batch). One
    /// cache line each: partitions of one version live on different shards, which store here
    /// after every batch.
    pub(crate) folded: Box<[CachePadded<AtomicU64>]>,
    /// The first partition that stopped on an error, and the error.
    pub(crate) failure: Mutex<Option<Failure>>,
    /// Why recording that failure (a poison record's) in `meta.json` failed, if it did: queries
    /// and waiters then get `Error::PoisonNotPersisted`, never `Poisoned`, which promises that a
    /// restart holds the version failed.
    pub(crate) failure_unrecorded: Mutex<Option<Arc<Error>>>,
    /// Why recording this version's swap in `meta.json` failed, if it did: it is served in this
    /// process, but a restart would serve the previous version, so `wait_swapped` reports
    /// `Error::SwapNotPersisted` instead of acknowledging the swap.
    pub(crate) swap_unrecorded: Mutex<Option<Arc<Error>>>,
    /// The incarnation of the topic this version reads (recorded in its checkpoints).
    pub(crate) topic_incarnation: u64,
    /// The version's `shape` file as this start found it, before rewriting it: the definition
    /// the version last ran with, which a format-4 checkpoint (recording none) is taken to have
    /// (`state::Stored::establish`). `None` when there was none.
    pub(crate) prior_shape: Option<String>,
    /// `BUILDING`, `SERVED` (every partition caught up and the served version moved here, or
    /// it was served from the start) or `SUPERSEDED` (a newer version was served first).
    pub(crate) outcome: AtomicU8,
    pub(crate) dropped: AtomicBool,
    /// Test hooks (`probe`).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) probes: Arc<probe::Probes>,
}

/// `DIR/views/NAME/VERSION/shape`: the version's key, window and aggregate as text, checked by
/// a later `Start::Checkpoint` from it.
pub(crate) const SHAPE_FILE: &str = "shape";

pub(crate) const BUILDING: u8 = 0;
pub(crate) const SERVED: u8 = 1;
pub(crate) const SUPERSEDED: u8 = 2;

impl Version {
    /// Called on a shard when one partition caught up; the last one flips the served version.
    ///
    /// The flip is one atomic store (queries see the new version at once); recording it in
    /// `meta.json` is a file write and two fsyncs, which run on glommio's blocking pool so the
    /// shard keeps serving. `Rebuild::wait_swapped` returns only once that record is durable
    /// (the outcome turns `SERVED` after the write), so a swap acknowledged to a caller survives
    /// a power cut.
    pub(crate) async fn partition_caught_up(self: &Arc<Self>) {
        let done = self.caught_up.fetch_add(1, Ordering::AcqRel) + 1;
        if done == self.partitions {
            // `fetch_max`, not load-then-store: two rebuilds finishing at once on two shards must
            // not let the older one overwrite the newer one. Under the versions lock, which
            // `Engine::drop_view_version` holds from its check that a version is not served to
            // its removal: a version dropped before it caught up is never served (every query
            // would fail on a version that is gone), and a drop after the swap is refused. The
            // loom model `a_swap_racing_a_drop_never_serves_a_dropped_version` found that race.
            // The lock's other holders are user threads looking a version up: a short wait, once
            // per rebuild.
            let previous = {
                let _versions =
                    self.entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (!self.dropped.load(Ordering::SeqCst))
                    .then(|| self.entry.served.fetch_max(self.number, Ordering::AcqRel))
            };
            let Some(previous) = previous else {
                // Dropped while it caught up: its waiters see `dropped`.
                self.entry.notifier.notify();
                return;
            };
            if previous < self.number {
                self.entry.swaps.fetch_add(1, Ordering::AcqRel);
                tracing::info!(view = %self.view, from = previous, to = self.number, "view version swapped");
                let entry = self.entry.clone();
                // `write_meta` reads `served` under the history lock, so the last write always
                // records the newest state, whichever thread writes first.
                #[cfg(not(loom))]
                let written = glommio::executor().spawn_blocking(move || write_meta(&entry)).await;
                // A loom model runs this on a model thread without an executor: the same write,
                // made directly.
                #[cfg(loom)]
                let written = write_meta(&entry);
                if let Err(e) = written {
                    tracing::error!(view = %self.view, error = %e,
                        "recording the served view version failed; the swap is not acknowledged");
                    *self
                        .swap_unrecorded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(e));
                }
                self.outcome.store(SERVED, Ordering::SeqCst);
            } else if previous == self.number {
                self.outcome.store(SERVED, Ordering::SeqCst);
            } else {
                self.outcome.store(SUPERSEDED, Ordering::SeqCst);
                tracing::info!(view = %self.view, version = self.number, served = previous,
                    "view version caught up after a newer one was served; it is not swapped in");
            }
        }
        self.entry.notifier.notify();
    }

    /// Publishes how far a partition folded and wakes whoever waits on it.
    pub(crate) fn partition_folded(&self, partition: u32, next_offset: u64) {
        self.folded[partition as usize].store(next_offset, Ordering::SeqCst);
        self.entry.notifier.notify();
    }

    /// Records a partition's error (the first one is kept) and wakes waiters.
    pub(crate) fn partition_failed(&self, failure: Failure) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(failure);
        self.entry.notifier.notify();
    }

    /// The version's failure (the first partition's), if any.
    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Records a poison failure whose `meta.json` write failed (before `partition_failed`), so
    /// the version's error says so.
    pub(crate) fn failure_not_recorded(&self, error: Error) {
        *self.failure_unrecorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(error));
    }

    /// The failure as the error a query or waiter returns.
    pub(crate) fn failure_error(&self) -> Option<Error> {
        let unrecorded = self
            .failure_unrecorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.failure().map(|f| match (f.offset, f.stage, unrecorded) {
            (Some(offset), Some(stage), Some(source)) => Error::PoisonNotPersisted {
                view: self.view.to_string(),
                version: self.number,
                partition: f.partition,
                offset,
                stage,
                message: f.message,
                source,
            },
            (Some(offset), Some(stage), None) => Error::Poisoned {
                view: self.view.to_string(),
                version: self.number,
                partition: f.partition,
                offset,
                stage,
                message: f.message,
            },
            _ => Error::ViewFailed {
                view: self.view.to_string(),
                version: self.number,
                partition: f.partition,
                reason: f.message,
            },
        })
    }

    pub(crate) fn partition_dir(&self, partition: u32) -> PathBuf {
        self.dir.join(partition.to_string())
    }

    /// What a checkpoint of one of its partitions belongs to (written into it, and checked when
    /// a partition resumes).
    pub(crate) fn checkpoint_of(&self, partition: u32) -> state::CheckpointOf {
        state::CheckpointOf {
            view: self.view.to_string(),
            version: self.number,
            partition,
            revision: self.def.revision.clone(),
            shape: self.def.shape_text(),
            topic_incarnation: self.topic_incarnation,
        }
    }
}

/// A view: its versions and the one queries are served from.
pub(crate) struct Entry {
    pub(crate) topic: String,
    pub(crate) served: AtomicU32,
    pub(crate) swaps: AtomicU64,
    pub(crate) versions: Mutex<BTreeMap<u32, Arc<Version>>>,
    /// Every version ever made, with its revision (persisted, so numbers are never reused).
    pub(crate) history: Mutex<BTreeMap<u32, String>>,
    /// Versions failed by a poison record (persisted: a restart keeps them failed). Written
    /// under the `history` lock, like the rest of `meta.json`.
    pub(crate) failed: Mutex<BTreeMap<u32, Failure>>,
    pub(crate) dir: PathBuf,
    /// The engine's storage seam (metadata and checkpoints go through it).
    pub(crate) disk: Disk,
    /// Wakes threads in `ViewHandle::wait_for` and `Rebuild::wait_swapped`.
    pub(crate) notifier: wait::Notifier,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MetaFile {
    format: u32,
    topic: String,
    served: u32,
    versions: BTreeMap<u32, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    failed: BTreeMap<u32, Failure>,
}

pub(crate) fn view_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("views").join(name)
}

/// What a data dir says about a view (without opening it): the topic it reads, the version it
/// served last, and the revision of every version ever made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredView {
    pub topic: String,
    pub served: u32,
    pub revisions: BTreeMap<u32, String>,
    /// Versions a poison record failed.
    pub failed: BTreeMap<u32, Failure>,
}

/// Reads a view's stored metadata from a data dir; `None` when there is no such view. Lets a
/// process that re-creates its views at start (the appliance) resume the version that was served.
pub fn stored_view(disk: &Disk, data_dir: &Path, name: &str) -> Result<Option<StoredView>, Error> {
    Ok(read_meta(disk, &view_dir(data_dir, name))?.map(|meta| StoredView {
        topic: meta.topic,
        served: meta.served,
        revisions: meta.revisions,
        failed: meta.failed,
    }))
}

/// A view's stored metadata: topic, served version, the revision of every version, and the
/// versions a poison record failed.
pub(crate) struct Meta {
    pub(crate) topic: String,
    pub(crate) served: u32,
    pub(crate) revisions: BTreeMap<u32, String>,
    pub(crate) failed: BTreeMap<u32, Failure>,
}

pub(crate) fn read_meta(disk: &Disk, dir: &Path) -> Result<Option<Meta>, Error> {
    let path = dir.join("meta.json");
    match disk.read_file_blocking(&path) {
        Ok(bytes) => {
            let meta: MetaFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Meta { path: path.clone(), reason: e.to_string() })?;
            Ok(Some(Meta {
                topic: meta.topic,
                served: meta.served,
                revisions: meta.versions,
                failed: meta.failed,
            }))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn write_meta(entry: &Entry) -> Result<(), Error> {
    // The history lock is held through the write: the engine thread (create, rebuild, drop) and a
    // swap (on the blocking pool) may write this file at the same time; holding it, the one that
    // renames last is the one that read `served` last. Blocking: never call it on a shard thread.
    let history = entry.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    write_meta_locked(entry, &history, entry.served.load(Ordering::Acquire))
}

/// `meta.json` recording `served` as the served version, written under the `history` lock the
/// caller holds (`history` is what it guards). `Engine::serve_view_version` records the version
/// it is about to serve this way before it switches, and switches while it still holds the
/// lock: no other writer can record an older `served` in between.
pub(crate) fn write_meta_locked(
    entry: &Entry,
    history: &BTreeMap<u32, String>,
    served: u32,
) -> Result<(), Error> {
    let meta = MetaFile {
        format: 1,
        topic: entry.topic.clone(),
        served,
        versions: history.clone(),
        failed: entry.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
    };
    entry.disk.create_dir_all_blocking(&entry.dir)?;
    let bytes = serde_json::to_vec_pretty(&meta).expect("view metadata serializes");
    entry.disk.write_file_atomic_blocking(&entry.dir.join("meta.json"), &bytes)?;
    Ok(())
}

/// Merges per-partition groups into rows (docs/semantics.md, "Rows across partitions"). A key's
/// groups from several partitions (a derived key spread over partitions) merge, which every
/// mergeable aggregate supports: for fixed windows, the groups with the same window start; for
/// sessions, every pair of sessions that overlap, so a key's sessions end up disjoint as if one
/// partition had seen all its events. Partials merge in partition order, for fixed bits.
pub(crate) fn merge_rows(
    aggregate: &Aggregate,
    window: Window,
    parts: Vec<Vec<(Vec<u8>, i64, Cell)>>,
) -> Vec<Row> {
    if let Window::Session { .. } = window {
        return merge_sessions(aggregate, parts);
    }
    let mut merged: BTreeMap<(Vec<u8>, i64), Cell> = BTreeMap::new();
    for part in parts {
        for (key, start, cell) in part {
            match merged.entry((key, start)) {
                std::collections::btree_map::Entry::Occupied(mut existing) => {
                    let existing = existing.get_mut();
                    aggregate.merge(&mut existing.agg, &cell.agg);
                    existing.end_ms = existing.end_ms.max(cell.end_ms);
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(cell);
                }
            }
        }
    }
    merged.into_iter().map(|((key, start), cell)| row(aggregate, key, start, cell)).collect()
}

fn row(aggregate: &Aggregate, key: Vec<u8>, window_start: i64, cell: Cell) -> Row {
    Row {
        key,
        window_start,
        window_end: cell.end_ms,
        value: aggregate.result(&cell.agg),
        state: cell.agg,
    }
}

/// Sessions of one key from several partitions, sorted by (start, partition), swept once: a
/// session overlapping the one being built (starting before its end) merges into it.
fn merge_sessions(aggregate: &Aggregate, parts: Vec<Vec<(Vec<u8>, i64, Cell)>>) -> Vec<Row> {
    let mut by_key: BTreeMap<Vec<u8>, Vec<(i64, usize, Cell)>> = BTreeMap::new();
    for (partition, part) in parts.into_iter().enumerate() {
        for (key, start, cell) in part {
            by_key.entry(key).or_default().push((start, partition, cell));
        }
    }
    let mut rows = Vec::new();
    for (key, mut sessions) in by_key {
        sessions.sort_by_key(|(start, partition, _)| (*start, *partition));
        let mut current: Option<(i64, Cell)> = None;
        for (start, _, cell) in sessions {
            match &mut current {
                Some((_, open)) if start < open.end_ms => {
                    aggregate.merge(&mut open.agg, &cell.agg);
                    open.end_ms = open.end_ms.max(cell.end_ms);
                }
                _ => {
                    if let Some((s, done)) = current.replace((start, cell)) {
                        rows.push(row(aggregate, key.clone(), s, done));
                    }
                }
            }
        }
        if let Some((s, done)) = current {
            rows.push(row(aggregate, key, s, done));
        }
    }
    rows
}

/// What a query asks of one partition.
#[derive(Debug, Clone)]
pub(crate) enum Query {
    Get { key: Vec<u8>, window_start: i64 },
    Range { from: Vec<u8>, to: Vec<u8> },
    Windows { key: Vec<u8>, from_ms: i64, to_ms: i64 },
    All,
}

impl Query {
    pub(crate) fn run(&self, state: &PartitionState) -> Vec<(Vec<u8>, i64, Cell)> {
        match self {
            Query::Get { key, window_start } => state
                .groups
                .get(key.as_slice())
                .and_then(|w| w.get(window_start))
                .map(|c| vec![(key.clone(), *window_start, c.clone())])
                .unwrap_or_default(),
            // `BTreeMap::range` panics on a reversed range, which would take the shard (and the
            // process) down; a reversed key range holds no key.
            Query::Range { from, to } if from > to => Vec::new(),
            Query::Range { from, to } => state
                .groups
                .range::<[u8], _>((
                    std::ops::Bound::Included(from.as_slice()),
                    std::ops::Bound::Excluded(to.as_slice()),
                ))
                .flat_map(|(k, w)| w.iter().map(move |(s, c)| (k.clone(), *s, c.clone())))
                .collect(),
            Query::Windows { key, from_ms, to_ms } => state
                .groups
                .get(key.as_slice())
                .map(|w| {
                    w.iter()
                        .filter(|(s, c)| c.end_ms > *from_ms && **s < *to_ms)
                        .map(|(s, c)| (key.clone(), *s, c.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            Query::All => state
                .groups
                .iter()
                .flat_map(|(k, w)| w.iter().map(move |(s, c)| (k.clone(), *s, c.clone())))
                .collect(),
        }
    }
}
