//! The user's side of a view: `ViewHandle` for queries, progress and waiting on what was folded,
//! and `Rebuild` for a version being rebuilt (waiting for its swap). Both are `Send + Clone` and
//! talk to the shards through their request channels; waiting sleeps on the view's `Notifier`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Inner;
use crate::operator::Window;
use crate::shard::Request;
use crate::view::wait::Offsets;
use crate::view::{self, Query, Row, VersionProgress};
use crate::Error;

/// Queries on one view (`Send + Clone`). Every query reads the served version once and asks every
/// partition for that version, so it never sees a mix of versions.
#[derive(Clone)]
pub struct ViewHandle {
    pub(crate) engine: Arc<Inner>,
    pub(crate) name: Arc<str>,
    entry: Arc<view::Entry>,
}

impl ViewHandle {
    pub(crate) fn new(engine: Arc<Inner>, name: Arc<str>, entry: Arc<view::Entry>) -> Self {
        ViewHandle { engine, name, entry }
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic the view reads.
    pub fn topic(&self) -> &str {
        &self.entry.topic
    }

    /// The version queries are answered from.
    pub fn version(&self) -> u32 {
        self.entry.served.load(Ordering::Acquire)
    }

    /// How many times the served version switched in this process.
    pub fn swaps(&self) -> u64 {
        self.entry.swaps.load(Ordering::Acquire)
    }

    pub(crate) fn version_def(&self, version: u32) -> Result<Arc<view::Version>, Error> {
        let versions =
            self.entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        versions
            .get(&version)
            .cloned()
            .ok_or(Error::UnknownView { view: self.name.to_string(), version })
    }

    fn query(&self, version: u32, query: Query) -> Result<Vec<Row>, Error> {
        let v = self.version_def(version)?;
        if let Some(e) = failure(&v) {
            // A failed version's rows are not what its definition computes: refuse them.
            return Err(e);
        }
        let topic = self.engine.topic(&v.def.topic)?;
        let mut parts = Vec::with_capacity(v.partitions as usize);
        for partition in 0..v.partitions {
            let shard = topic.shards[partition as usize];
            let q = query.clone();
            let view = self.name.clone();
            parts.push(self.engine.call(shard, |reply| Request::QueryView {
                view,
                version,
                partition,
                query: q,
                reply,
            })?);
        }
        Ok(view::merge_rows(&v.def.aggregate, v.def.window, parts))
    }

    /// A key's rows, merged over partitions, then `keep` applied. For session windows a key's
    /// partial sessions must all be merged before a row's bounds are known, so the partitions
    /// are asked for all of the key's sessions.
    fn key_rows(
        &self,
        key: &[u8],
        narrow: Query,
        keep: impl Fn(&Row) -> bool,
    ) -> Result<Vec<Row>, Error> {
        let version = self.version();
        let query = self.key_query(version, key, narrow)?;
        Ok(self.query(version, query)?.into_iter().filter(keep).collect())
    }

    /// What to ask the partitions for a key's rows: `narrow`, or for session windows all of the
    /// key's sessions (see `key_rows`).
    pub(crate) fn key_query(
        &self,
        version: u32,
        key: &[u8],
        narrow: Query,
    ) -> Result<Query, Error> {
        Ok(match self.version_def(version)?.def.window {
            Window::Session { .. } => {
                Query::Windows { key: key.to_vec(), from_ms: i64::MIN, to_ms: i64::MAX }
            }
            _ => narrow,
        })
    }

    /// The row of `key` whose window starts at `window_start` (`operator::window::ALL_TIME` for
    /// views without windows; for sessions, the start of the merged session).
    pub fn get(&self, key: &[u8], window_start: i64) -> Result<Option<Row>, Error> {
        let narrow = Query::Get { key: key.to_vec(), window_start };
        let rows = self.key_rows(key, narrow, |r| r.window_start == window_start)?;
        Ok(rows.into_iter().next())
    }

    /// Every row whose key is in `[from, to)`, in key then window order (none when `from >= to`).
    pub fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<Row>, Error> {
        self.query(self.version(), Query::Range { from: from.to_vec(), to: to.to_vec() })
    }

    /// The rows of `key` whose window overlaps `[from_ms, to_ms)` (`start < to_ms` and
    /// `end > from_ms`), in window order.
    pub fn windows(&self, key: &[u8], from_ms: i64, to_ms: i64) -> Result<Vec<Row>, Error> {
        let narrow = Query::Windows { key: key.to_vec(), from_ms, to_ms };
        self.key_rows(key, narrow, |r| r.window_start < to_ms && r.window_end > from_ms)
    }

    /// Every row of the served version (small views, tests).
    pub fn rows(&self) -> Result<Vec<Row>, Error> {
        self.query(self.version(), Query::All)
    }

    /// Every row of a given version.
    pub fn rows_of(&self, version: u32) -> Result<Vec<Row>, Error> {
        self.query(version, Query::All)
    }

    /// Offsets, watermark, lag, rate, ETA, skip counters and activity of every partition of a
    /// version. Cheap: it never touches the state's groups, so it may be polled.
    pub fn progress_of(&self, version: u32) -> Result<VersionProgress, Error> {
        Ok(self.progress_parts(version, false)?.0)
    }

    /// Progress of the served version.
    pub fn progress(&self) -> Result<VersionProgress, Error> {
        self.progress_of(self.version())
    }

    /// Per-partition digests of a version's whole state: equal digests, equal bytes. Each
    /// hashes its partition's whole state on the owning shard, holding it meanwhile: for tests
    /// and verification, not for polling.
    pub fn digests_of(&self, version: u32) -> Result<Vec<u64>, Error> {
        let (_, digests) = self.progress_parts(version, true)?;
        Ok(digests.into_iter().map(|d| d.unwrap_or_default()).collect())
    }

    /// The test hooks of a version (`view::probe`): counts of what its code did.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn probes(&self, version: u32) -> Result<Arc<crate::view::probe::Probes>, Error> {
        Ok(self.version_def(version)?.probes.clone())
    }

    fn progress_parts(
        &self,
        version: u32,
        digest: bool,
    ) -> Result<(VersionProgress, Vec<Option<u64>>), Error> {
        let v = self.version_def(version)?;
        let topic = self.engine.topic(&v.def.topic)?;
        let mut partitions = Vec::new();
        let mut digests = Vec::new();
        for partition in 0..v.partitions {
            let shard = topic.shards[partition as usize];
            let view = self.name.clone();
            let (progress, d) = self.engine.call(shard, |reply| Request::ViewProgress {
                view,
                version,
                partition,
                digest,
                reply,
            })?;
            partitions.push(progress);
            digests.push(d);
        }
        let progress = VersionProgress {
            version,
            revision: v.def.revision.clone(),
            served: self.version() == version,
            partitions,
        };
        Ok((progress, digests))
    }

    /// The versions running in this process.
    pub fn versions(&self) -> Vec<u32> {
        self.entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// The end of every partition of the view's topic now: `wait_for(view.log_end()?, ..)`
    /// waits until everything appended so far is folded.
    pub fn log_end(&self) -> Result<Offsets, Error> {
        let topic = self.engine.topic(&self.entry.topic)?;
        let mut offsets = Offsets::new();
        for partition in 0..topic.config.partitions {
            let shard = topic.shards[partition as usize];
            let name = topic.name.clone();
            let end = self
                .engine
                .call(shard, |reply| Request::Offsets { topic: name, partition, reply })?
                .end_offset;
            offsets = offsets.at(partition, end);
        }
        Ok(offsets)
    }

    /// Sleeps until the served version has folded every record below `offsets` (per partition;
    /// pass the `Ack`s or `BatchAck`s a producer returned), or fails after `timeout`. If a swap
    /// happens meanwhile, the version served at each check is the one asked. Woken by the shards
    /// as they fold, never by polling.
    pub fn wait_for(&self, offsets: impl Into<Offsets>, timeout: Duration) -> Result<(), Error> {
        let offsets = offsets.into();
        let partitions = self.engine.topic(&self.entry.topic)?.config.partitions;
        if let Some((partition, _)) = offsets.iter().find(|(p, _)| *p >= partitions) {
            return Err(Error::UnknownPartition {
                topic: self.entry.topic.clone(),
                partition,
                partitions,
            });
        }
        let mut behind = String::new();
        let result = self.entry.notifier.wait(timeout, || {
            if self.engine.is_shut_down() {
                return Some(Err(Error::ShutDown));
            }
            if let Some(dead) = self.engine.dead_shard() {
                return Some(Err(dead));
            }
            let served = self.version();
            let version = match self.version_def(served) {
                Ok(version) => version,
                Err(e) => return Some(Err(e)),
            };
            if let Some(e) = failure(&version) {
                return Some(Err(e));
            }
            behind.clear();
            for (partition, needed) in offsets.iter() {
                let folded = version.folded[partition as usize].load(Ordering::SeqCst);
                if folded < needed {
                    behind = format!(
                        "version {served} partition {partition} folded up to offset {folded} of {needed}"
                    );
                    return None;
                }
            }
            Some(Ok(()))
        });
        result.unwrap_or_else(|| {
            Err(Error::Timeout {
                view: self.name.to_string(),
                waited_ms: timeout.as_millis() as u64,
                waiting_for: behind,
            })
        })
    }
}

/// The first partition error of a version, as the error a waiter returns.
fn failure(version: &view::Version) -> Option<Error> {
    version.failure_error()
}

/// A view version being rebuilt (from `Engine::rebuild_view`).
#[derive(Clone)]
pub struct Rebuild {
    engine: Arc<Inner>,
    name: Arc<str>,
    entry: Arc<view::Entry>,
    version: Arc<view::Version>,
}

impl Rebuild {
    pub(crate) fn new(
        engine: Arc<Inner>,
        name: Arc<str>,
        entry: Arc<view::Entry>,
        version: Arc<view::Version>,
    ) -> Self {
        Rebuild { engine, name, entry, version }
    }

    /// The new version's number.
    pub fn version(&self) -> u32 {
        self.version.number
    }

    /// A query handle on the view (queries go to the served version).
    pub fn view(&self) -> ViewHandle {
        ViewHandle::new(self.engine.clone(), self.name.clone(), self.entry.clone())
    }

    /// Whether this version is served now (it was swapped in, or served by request, and no
    /// other version was served since).
    pub fn is_swapped(&self) -> bool {
        self.entry.served.load(Ordering::Acquire) == self.version.number
    }

    /// Sleeps until every partition of this version has caught up and queries switched to it,
    /// woken by the shard that folds the last partition's catch-up (or by
    /// `Engine::serve_view_version` serving it). Fails when another version is served instead:
    /// a newer one was served first, or this one was swapped in and then replaced (a rollback),
    /// both `Error::Superseded`; when a partition stopped on an error, the version or the view
    /// was dropped, the engine shut down, or `timeout` passed.
    pub fn wait_swapped(&self, timeout: Duration) -> Result<(), Error> {
        let number = self.version.number;
        let result = self.entry.notifier.wait(timeout, || {
            // A swap is acknowledged once its record in `meta.json` is durable: the outcome turns
            // `SERVED` after that write (`Version::partition_caught_up`). A version served by
            // request (`Engine::serve_view_version`, which records it before it returns) before
            // it caught up counts at once. Either way only while it is still the one served: after
            // a rollback the swap is `Superseded` below.
            //
            // The outcome is read before `served`: a `SERVED` outcome was stored after its swap,
            // so `served` read after it is the swap's or newer. Read the other way round, a weak
            // memory order lets `served` be older than the outcome, and a swap just made looks
            // superseded (found by the loom model
            // `a_swap_racing_a_drop_never_serves_a_dropped_version`).
            let outcome = self.version.outcome.load(Ordering::SeqCst);
            let served = self.entry.served.load(Ordering::Acquire);
            let all_caught_up =
                self.version.caught_up.load(Ordering::Acquire) >= self.version.partitions;
            if served == number && (outcome == view::SERVED || !all_caught_up) {
                // Served here, but its record did not reach the disk: a restart would serve
                // the previous version, so the swap is not acknowledged.
                if let Some(source) = self
                    .version
                    .swap_unrecorded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                {
                    return Some(Err(Error::SwapNotPersisted {
                        view: self.name.to_string(),
                        version: number,
                        source,
                    }));
                }
                return Some(Ok(()));
            }
            if self.engine.is_shut_down() {
                return Some(Err(Error::ShutDown));
            }
            if let Some(dead) = self.engine.dead_shard() {
                return Some(Err(dead));
            }
            if self.version.dropped.load(Ordering::SeqCst) {
                return Some(Err(Error::UnknownView {
                    view: self.name.to_string(),
                    version: number,
                }));
            }
            if let Some(e) = failure(&self.version) {
                return Some(Err(e));
            }
            // `SERVED` while another version is served: swapped in, then replaced.
            if served > number || outcome != view::BUILDING {
                return Some(Err(Error::Superseded {
                    view: self.name.to_string(),
                    version: number,
                    served,
                }));
            }
            None
        });
        result.unwrap_or_else(|| {
            let caught_up = self.version.caught_up.load(Ordering::Acquire);
            Err(Error::Timeout {
                view: self.name.to_string(),
                waited_ms: timeout.as_millis() as u64,
                waiting_for: format!(
                    "the swap to version {number} ({caught_up} of {} partitions caught up)",
                    self.version.partitions
                ),
            })
        })
    }
}
