//! The view half of `Engine`: create, rebuild, resume, serve, drop and delete view versions.
//! A version's lifecycle is driven here under `Inner::meta_lock`; its state and folds live in
//! `crate::view`, on the shards.

use crate::meta;
use crate::shard::Request;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::view::{self, Rebuild, ViewDef, ViewHandle};
use crate::Error;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Engine, TRASH_DIR};

impl Engine {
    /// Registers a view and starts maintaining it. If a version built from the same `revision`
    /// exists in the data dir, it resumes from its checkpoints; otherwise a new version is built
    /// from `def.start` and served right away (its progress shows how far it got).
    pub fn create_view(&self, name: &str, def: ViewDef) -> Result<ViewHandle, Error> {
        meta::validate_topic_name(name)?;
        def.validate()?;
        let _meta = self.inner.lock_meta();
        let topic = self.inner.topic(&def.topic)?;
        if self
            .inner
            .views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(name)
        {
            return Err(Error::Config {
                field: "view",
                reason: format!("view {name:?} is already open"),
            });
        }
        let disk = self.inner.disk().clone();
        let dir = view::view_dir(&self.inner.config.data_dir, name);
        let stored = view::read_meta(&disk, &dir)?;
        if stored.is_none() && disk.metadata_blocking(&dir)?.is_some() {
            // `meta.json` is written before any version starts, so a view dir without it is a
            // leftover (a checkpoint that landed after `delete_view`): never resume from it.
            disk.remove_dir_all_blocking(&dir)?;
        }
        let (history, failed, stored_served) = match stored {
            Some(view::Meta { topic: stored_topic, served, revisions: history, failed }) => {
                if stored_topic != def.topic {
                    return Err(Error::Config {
                        field: "view",
                        reason: format!(
                            "view {name:?} is defined over topic {stored_topic:?}, not {:?}",
                            def.topic
                        ),
                    });
                }
                (history, failed, Some(served))
            }
            None => (BTreeMap::new(), BTreeMap::new(), None),
        };
        // The version that was served, when it has this revision (after a rollback, an older
        // version may share its revision with a newer one); else the newest with it.
        let resumed = stored_served
            .filter(|v| history.get(v) == Some(&def.revision))
            .or_else(|| history.iter().rev().find(|(_, r)| **r == def.revision).map(|(v, _)| *v));
        let known = history.keys().next_back().copied();
        let entry = Arc::new(view::Entry {
            topic: def.topic.clone(),
            // The version this call creates or resumes is the one served (a new one's number is
            // set below, once taken).
            served: crate::sync::atomic::AtomicU32::new(resumed.unwrap_or(0)),
            swaps: crate::sync::atomic::AtomicU64::new(0),
            versions: crate::sync::Mutex::new(BTreeMap::new()),
            history: crate::sync::Mutex::new(history),
            failed: crate::sync::Mutex::new(failed),
            dir,
            disk,
            notifier: view::wait::Notifier::default(),
        });
        let number = match resumed {
            Some(number) => number,
            None => {
                // Checked first: a refused definition takes no number.
                check_seed(&entry, &def)?;
                // A number no version of this name ever had (see `meta::next_view_version`),
                // recorded before anything of the version exists.
                let number =
                    meta::next_view_version(&entry.disk, &self.inner.config.data_dir, name, known)?;
                entry.served.store(number, Ordering::Release);
                number
            }
        };
        entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, def.revision.clone());
        view::write_meta(&entry)?;
        self.inner
            .views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), entry.clone());
        if let Err(e) = self.start_version(name, &entry, number, def, topic.config.partitions) {
            // Say, the log no longer holds the start (`ViewBeforeLogStart`): nothing stays open.
            self.abandon_version(name, &entry, number);
            self.inner
                .views
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(name);
            return Err(e);
        }
        Ok(ViewHandle::new(self.inner.clone(), name.into(), entry))
    }

    /// Builds version N+1 of a view from `def` (from `def.start`) in the shards' replay queues while
    /// the served version keeps answering queries; when every partition has caught up with the
    /// live tail, queries switch to it atomically. Returns a handle on the new version: its
    /// number (`Rebuild::version`) and `Rebuild::wait_swapped` to sleep until the swap.
    pub fn rebuild_view(&self, name: &str, def: ViewDef) -> Result<Rebuild, Error> {
        def.validate()?;
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if def.topic != entry.topic {
            return Err(Error::Config {
                field: "view",
                reason: format!("a rebuild must read topic {:?}", entry.topic),
            });
        }
        check_seed(&entry, &def)?;
        let topic = self.inner.topic(&def.topic)?;
        let known = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .next_back()
            .copied();
        // Never a number a dropped (or deleted) version had: what it left on disk is not ours.
        let number =
            meta::next_view_version(&entry.disk, &self.inner.config.data_dir, name, known)?;
        entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, def.revision.clone());
        view::write_meta(&entry)?;
        match self.start_version(name, &entry, number, def, topic.config.partitions) {
            Ok(version) => Ok(Rebuild::new(self.inner.clone(), name.into(), entry, version)),
            Err(e) => {
                self.abandon_version(name, &entry, number);
                entry
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&number);
                if let Err(meta) = view::write_meta(&entry) {
                    tracing::warn!(view = name, error = %meta, "recording an abandoned rebuild failed");
                }
                Err(e)
            }
        }
    }

    /// Stops the partitions of a version that failed to start on some shard.
    fn abandon_version(&self, name: &str, entry: &Arc<view::Entry>, number: u32) {
        // Marked dropped under the versions lock, as `drop_view_version` does: a swap (which
        // takes it) never serves it.
        let mut versions = entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(version) = versions.remove(&number) {
            version.dropped.store(true, Ordering::SeqCst);
        }
        drop(versions);
        let view_name: Arc<str> = Arc::from(name);
        for shard in 0..self.shard_count() {
            let _ = self.inner.call(shard, |reply| Request::DropView {
                view: view_name.clone(),
                version: number,
                reply,
            });
        }
        entry.notifier.notify();
    }

    /// Starts again a version of a view that is recorded on disk but not running (a rebuild
    /// that was in progress, or a version rolled back from, when the process stopped): it
    /// resumes from its own checkpoints under its own number, and swaps in when it catches up
    /// if it is newer than the served version, as a rebuild does. `def` must carry the revision
    /// recorded for that version.
    pub fn resume_view_version(
        &self,
        name: &str,
        version: u32,
        def: ViewDef,
    ) -> Result<Rebuild, Error> {
        def.validate()?;
        // Under the metadata lock, as every other view lifecycle call: a resume racing
        // `delete_view` would otherwise start a version the deletion already passed over (it
        // would run orphaned, checkpointing into a moved directory), and two resumes of one
        // version would both pass the "already running" check.
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if def.topic != entry.topic {
            return Err(Error::Config {
                field: "view",
                reason: format!("a version of {name:?} must read topic {:?}", entry.topic),
            });
        }
        let recorded = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&version)
            .cloned();
        match recorded {
            None => return Err(Error::UnknownView { view: name.to_string(), version }),
            Some(revision) if revision != def.revision => {
                return Err(Error::Config {
                    field: "revision",
                    reason: format!(
                        "version {version} of {name:?} was built from revision {revision:?}, \
                         not {:?}",
                        def.revision
                    ),
                })
            }
            Some(_) => {}
        }
        if entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version)
        {
            return Err(Error::Config {
                field: "version",
                reason: format!("version {version} of {name:?} is already running"),
            });
        }
        let topic = self.inner.topic(&def.topic)?;
        let started = self.start_version(name, &entry, version, def, topic.config.partitions)?;
        Ok(Rebuild::new(self.inner.clone(), name.into(), entry, started))
    }

    fn start_version(
        &self,
        name: &str,
        entry: &Arc<view::Entry>,
        number: u32,
        def: ViewDef,
        partitions: u32,
    ) -> Result<Arc<view::Version>, Error> {
        // The version this call starts is served from the start when nothing else is (a new
        // view, or one resumed from disk).
        let outcome = if entry.served.load(Ordering::Acquire) == number {
            view::SERVED
        } else {
            view::BUILDING
        };
        let topic_incarnation = self.inner.topic(&def.topic)?.incarnation;
        let version = Arc::new(view::Version {
            view: Arc::from(name),
            number,
            def: Arc::new(def),
            partitions,
            caught_up: crate::sync::atomic::AtomicU32::new(0),
            entry: entry.clone(),
            dir: entry.dir.join(number.to_string()),
            folded: (0..partitions)
                .map(|_| crossbeam_utils::CachePadded::new(crate::sync::atomic::AtomicU64::new(0)))
                .collect(),
            // A poison record failed this version before a restart: it stays failed.
            failure: crate::sync::Mutex::new(
                entry
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&number)
                    .cloned(),
            ),
            failure_unrecorded: crate::sync::Mutex::new(None),
            swap_unrecorded: crate::sync::Mutex::new(None),
            topic_incarnation,
            prior_shape: entry
                .disk
                .read_file_blocking(&entry.dir.join(number.to_string()).join(view::SHAPE_FILE))
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok()),
            outcome: crate::sync::atomic::AtomicU8::new(outcome),
            dropped: AtomicBool::new(false),
            #[cfg(any(test, feature = "test-hooks"))]
            probes: Default::default(),
        });
        entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, version.clone());
        // What `Start::Checkpoint` from this version checks once it no longer runs.
        let shape = version.def.shape_text();
        // Through the view's disk (the seam): on a simulated disk these files live there too.
        let disk = &version.entry.disk;
        disk.create_dir_all_blocking(&version.dir)?;
        disk.write_file_atomic_blocking(&version.dir.join(view::SHAPE_FILE), shape.as_bytes())?;
        let topic = self.inner.topic(&version.def.topic)?;
        for partition in 0..partitions {
            let shard = topic.shards[partition as usize];
            let version = version.clone();
            self.inner.call(shard, |reply| Request::StartView { version, partition, reply })?;
        }
        Ok(version)
    }

    /// A handle for queries on a view opened with `create_view`.
    pub fn view(&self, name: &str) -> Result<ViewHandle, Error> {
        let entry = self.view_entry(name)?;
        Ok(ViewHandle::new(self.inner.clone(), name.into(), entry))
    }

    /// Serves another running version of a view again (a rollback after a rebuild, or a roll
    /// forward): the switch is one atomic store, like a swap. The version must still be running,
    /// that is, not dropped.
    ///
    /// All or nothing: the new served version is recorded in the view's `meta.json` (durably)
    /// first, and queries switch only once it is. When the record fails the caller gets
    /// `Error::ServeNotPersisted` and nothing changed in memory: queries still serve the
    /// previous version, which is also what a restart serves (a failed atomic write leaves the
    /// old record; where the rename landed but its directory fsync failed, the record is
    /// written again with the previous version, best effort).
    pub fn serve_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        if !entry
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version)
        {
            return Err(Error::UnknownView { view: name.to_string(), version });
        }
        // Held from the record to the switch: a rebuild's swap (`Version::partition_caught_up`)
        // writes `meta.json` under the same lock, reading `served` then, so whichever of the two
        // writes last records what memory serves.
        let history = entry.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = view::write_meta_locked(&entry, &history, version) {
            let current = entry.served.load(Ordering::Acquire);
            if let Err(again) = view::write_meta_locked(&entry, &history, current) {
                tracing::warn!(view = name, error = %again,
                    "restoring the view's record after a failed switch failed too");
            }
            tracing::error!(view = name, version, error = %e,
                "recording the served view version failed; the switch was not made");
            return Err(Error::ServeNotPersisted {
                view: name.to_string(),
                version,
                served: current,
                source: Arc::new(e),
            });
        }
        let previous = entry.served.swap(version, Ordering::AcqRel);
        drop(history);
        if previous != version {
            entry.swaps.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                view = name,
                from = previous,
                to = version,
                "view version served by request"
            );
            // `wait_for` re-checks against the version served now, `wait_swapped` sees its
            // version served (or replaced): neither may sleep through the switch.
            entry.notifier.notify();
        }
        Ok(())
    }

    /// Stops a version that is not served and deletes its checkpoints.
    ///
    /// In this order: the version stops (queries and waiters on it get `UnknownView`), its
    /// directory is removed and the view's directory synced, and only then is it forgotten in
    /// the view's `meta.json`. When removing its files fails, the caller gets
    /// `Error::DropNotFinished` naming the directory, and the version is in the state of a
    /// version not resumed after a restart: stopped and not served, still recorded (its
    /// revision and number in `meta.json`) with whatever files are left. Calling this again
    /// finishes the drop (a recorded version that is not running can be dropped), and
    /// `resume_view_version` could run it again from its checkpoints instead.
    pub fn drop_view_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self.view_entry(name)?;
        // Check and removal under the versions lock, which a rebuild's swap holds to move
        // `served` (`Version::partition_caught_up`): the swap either comes first (this drop is
        // refused) or sees the version dropped and leaves `served` alone.
        let running = {
            let mut versions =
                entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if entry.served.load(Ordering::Acquire) == version {
                return Err(Error::Config {
                    field: "version",
                    reason: format!("version {version} is served; it cannot be dropped"),
                });
            }
            let removed = versions.remove(&version);
            if let Some(removed) = &removed {
                removed.dropped.store(true, Ordering::SeqCst);
            }
            removed.is_some()
        };
        let recorded = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&version);
        if !running && !recorded {
            return Err(Error::UnknownView { view: name.to_string(), version });
        }
        if running {
            entry.notifier.notify();
        }
        // Every shard, also on a retry: a shard that does not run the version does nothing.
        let view_name: Arc<str> = Arc::from(name);
        for shard in 0..self.shard_count() {
            self.inner.call(shard, |reply| Request::DropView {
                view: view_name.clone(),
                version,
                reply,
            })?;
        }
        // Synced before the version is forgotten: once this returns, a power cut does not
        // bring the version's files back (its number is never taken again, but its shape file
        // would still seed a `Start::Checkpoint` from a version that was dropped).
        let dir = entry.dir.join(version.to_string());
        let removed = match entry.disk.remove_dir_all_blocking(&dir) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
        // Synced also when the directory was already gone (a retry after a failed sync); a
        // view directory that does not exist has nothing to make durable.
        .and_then(|()| match entry.disk.sync_dir_blocking(&entry.dir) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        });
        if let Err(e) = removed {
            tracing::error!(view = name, version, dir = %dir.display(), error = %e,
                "removing a dropped version's files failed; it stays recorded, stopped");
            return Err(Error::DropNotFinished {
                view: name.to_string(),
                version,
                path: dir,
                source: Arc::new(e.into()),
            });
        }
        // The record last, and all or nothing: when it fails, memory keeps the version recorded
        // as `meta.json` does, so a retry finds it and finishes (the files are gone already).
        let history = entry
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&version);
        let failed =
            entry.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&version);
        if let Err(e) = view::write_meta(&entry) {
            if let Some(history) = history {
                entry
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(version, history);
            }
            if let Some(failed) = failed {
                entry
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(version, failed);
            }
            tracing::error!(view = name, version, error = %e,
                "recording a dropped version failed; it stays recorded, stopped");
            return Err(Error::DropNotFinished {
                view: name.to_string(),
                version,
                path: entry.dir.join("meta.json"),
                source: Arc::new(e),
            });
        }
        Ok(())
    }

    /// Stops every version of a view and deletes its checkpoints and metadata. The view's
    /// directory is first moved to `DIR/trash` (one rename, so a crash never leaves half a view
    /// that a later view of the same name would resume from), then removed. Once this returns
    /// the deletion is durable (the rename is followed by an fsync of `DIR/views`): a power cut
    /// never brings the view, its metadata or its checkpoints back.
    pub fn delete_view(&self, name: &str) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let entry = self
            .inner
            .views
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or(Error::UnknownView { view: name.to_string(), version: 0 })?;
        let versions = std::mem::take(
            &mut *entry.versions.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // Waiters fail now (`UnknownView`) instead of sleeping until their timeout.
        for version in versions.values() {
            version.dropped.store(true, Ordering::SeqCst);
        }
        entry.notifier.notify();
        let versions: Vec<u32> = versions.into_keys().collect();
        let view_name: Arc<str> = Arc::from(name);
        for version in versions {
            for shard in 0..self.shard_count() {
                self.inner.call(shard, |reply| Request::DropView {
                    view: view_name.clone(),
                    version,
                    reply,
                })?;
            }
        }
        let disk = &entry.disk;
        let trash = self.inner.config.data_dir.join(TRASH_DIR);
        disk.create_dir_all_blocking(&trash)?;
        let doomed = trash.join(format!("view-{name}-{}", std::process::id()));
        match disk.rename_blocking(&entry.dir, &doomed) {
            Ok(()) => {
                if let Some(parent) = entry.dir.parent() {
                    disk.sync_dir_blocking(parent)?;
                }
                if let Err(e) = disk.remove_dir_all_blocking(&doomed) {
                    tracing::warn!(view = name, error = %e, "emptying the trash failed; the next start does");
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(view = name, "view deleted");
        Ok(())
    }

    /// The open views and the topic each reads.
    pub fn views(&self) -> BTreeMap<String, String> {
        let views = self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        views.iter().map(|(name, entry)| (name.clone(), entry.topic.clone())).collect()
    }

    fn view_entry(&self, name: &str) -> Result<Arc<view::Entry>, Error> {
        let views = self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let served = views.get(name).map(|e| e.served.load(Ordering::Acquire)).unwrap_or(0);
        views
            .get(name)
            .cloned()
            .ok_or(Error::UnknownView { view: name.to_string(), version: served })
    }
}

/// Refuses a `Start::Checkpoint { version }` whose version's state this definition cannot
/// continue exactly (another key, window or aggregate would read its groups wrongly), naming the
/// field that differs; and one whose version is not running, whose definition is unknown.
fn check_seed(entry: &view::Entry, def: &ViewDef) -> Result<(), Error> {
    let crate::view::Start::Checkpoint { version } = def.start else { return Ok(()) };
    let seed = entry
        .versions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&version)
        .map(|v| v.def.clone());
    let differs = match seed {
        Some(seed) => def.cannot_continue(&seed),
        None => {
            // Not running: compare with the shape it recorded when it started.
            let path = entry.dir.join(version.to_string()).join(view::SHAPE_FILE);
            let recorded = match entry.disk.read_file_blocking(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.is_not_found() => {
                    return Err(Error::Config {
                        field: "start",
                        reason: format!(
                            "Start::Checkpoint {{ version: {version} }}: version {version} is not \
                             running and recorded no definition to check this one against"
                        ),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            def.shape().into_iter().find_map(|(field, text)| {
                let theirs = recorded
                    .lines()
                    .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix('=')));
                match (text, theirs) {
                    (Some(ours), Some(theirs)) if ours == theirs => None,
                    (Some(ours), theirs) => Some((
                        field,
                        format!(
                            "the {field} is {ours}, the checkpoint's {}",
                            theirs.unwrap_or("?")
                        ),
                    )),
                    (None, _) => Some((
                        field,
                        format!(
                            "a closure or custom aggregate as {field} can only continue a running \
                             version that shares it"
                        ),
                    )),
                }
            })
        }
    };
    match differs {
        Some((field, reason)) => Err(Error::Config {
            field,
            reason: format!(
                "Start::Checkpoint {{ version: {version} }} cannot continue that version's state: \
                 {reason}"
            ),
        }),
        None => Ok(()),
    }
}
