//! A view partition's checkpoints on the shard: where its state starts (the newest valid
//! checkpoint the log still covers, or the definition's start), and taking one: the state copied
//! a step at a time between yields, encoded on the blocking pool, written by a task of its own,
//! one at a time per partition. The fold that calls them is in the parent module.

use super::*;

/// Where a view partition starts: its state, where its reader starts, and the checkpoint offset
/// it resumed from. The newest valid checkpoint the log still covers, or a fresh state at the
/// definition's start.
///
/// A start the log cannot serve exactly is refused (`Error::ViewBeforeLogStart`): `Beginning` (or
/// a checkpoint seed without a checkpoint) once retention deleted offset 0, a checkpoint older
/// than the log start with no newer one, or a `Timestamp` whose first record is the first one
/// retained (deleted records may have qualified). `Start::EarliestRetained` asks for the first
/// retained record instead. File reads go through the seam (the blocking pool on the real disk);
/// checkpoints are decoded on the blocking pool.
pub(crate) async fn initial_state(
    version: &Version,
    partition: u32,
    log: &PartitionLog,
) -> Result<(PartitionState, Seek, Option<u64>), crate::Error> {
    let disk = &version.entry.disk;
    // Our own checkpoints first (a restart); then, for a fresh version seeded from another one,
    // that version's.
    let own = checkpoints(disk, &version.partition_dir(partition)).await;
    let ours = version.checkpoint_of(partition);
    let mut seed_shape = None;
    let seeded = match version.def.start {
        crate::view::Start::Checkpoint { version: seed } if own.is_empty() => {
            let seed_dir = version.entry.dir.join(seed.to_string());
            seed_shape = disk
                .read_file(&seed_dir.join(crate::view::SHAPE_FILE))
                .await
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let dir = seed_dir.join(partition.to_string());
            checkpoints(disk, &dir).await.into_iter().map(|p| (p, Some(seed))).collect()
        }
        _ => Vec::new(),
    };
    let log_start = log.start_offset();
    let mut needed = 0;
    let own = own.into_iter().map(|p| (p, None));
    for (path, seed) in own.rev().chain(seeded.into_iter().rev()) {
        let read = match disk.read_file(&path).await {
            // Validating and decoding a large checkpoint takes a while: not on the shard.
            Ok(bytes) => {
                let path = path.clone();
                glommio::executor()
                    .spawn_blocking(move || state::decode_stored(&path, &bytes))
                    .await
            }
            Err(e) => Err(e.into()),
        };
        // A checkpoint of an older format gets the identity it does not record from where it
        // lies (`Stored::establish`), or is refused like a foreign one.
        let dir_shape = match seed {
            None => version.prior_shape.as_deref(),
            Some(_) => seed_shape.as_deref(),
        };
        let read = read.and_then(|(stored, state)| match stored.establish(&ours, dir_shape) {
            Ok(of) => Ok((of, state)),
            Err(reason) => Err(crate::Error::Meta { path: path.clone(), reason }),
        });
        // Anything but our own checkpoint, or our seed's (`CheckpointOf::resumes`), is ignored,
        // never loaded (a file copied in, a definition changed under an unchanged revision): the
        // partition goes on to an older checkpoint, or replays from the start, which is always
        // exact (refused only where retention deleted the start). Not an error: the view stays
        // available, and what it serves is right.
        let read = read.and_then(|(of, state)| {
            if of.resumes(&ours, seed) {
                Ok(state)
            } else {
                Err(crate::Error::Meta {
                    path: path.clone(),
                    reason: format!("a checkpoint of {of}, not one {ours} may resume from"),
                })
            }
        });
        match read {
            Ok(state)
                if state.next_offset <= log.end_offset() && state.next_offset >= log_start =>
            {
                tracing::info!(view = %version.view, version = version.number, partition,
                    next_offset = state.next_offset, "view partition resumed from checkpoint");
                let offset = state.next_offset;
                return Ok((state, Seek::Offset(offset), Some(offset)));
            }
            Ok(state) if state.next_offset < log_start => {
                needed = needed.max(state.next_offset);
                tracing::warn!(checkpoint = %path.display(), next_offset = state.next_offset,
                    log_start, "checkpoint is older than the log start; ignoring it")
            }
            Ok(state) => {
                tracing::warn!(checkpoint = %path.display(), next_offset = state.next_offset,
                log_end = log.end_offset(), "checkpoint is not covered by the log; ignoring it")
            }
            Err(e) => tracing::warn!(error = %e,
                "damaged or foreign checkpoint ignored; trying an older one"),
        }
    }
    let before_start = |needed: u64| crate::Error::ViewBeforeLogStart {
        view: version.view.to_string(),
        version: version.number,
        partition,
        needed,
        log_start,
    };
    let seek = match version.def.start {
        crate::view::Start::EarliestRetained => Seek::Beginning,
        crate::view::Start::Beginning | crate::view::Start::Checkpoint { .. } => {
            if log_start > 0 {
                return Err(before_start(needed));
            }
            Seek::Beginning
        }
        crate::view::Start::Timestamp(ts) => {
            if log_start > 0 && log.reader(Seek::Timestamp(ts))?.next_offset() <= log_start {
                return Err(before_start(needed));
            }
            Seek::Timestamp(ts)
        }
    };
    Ok((PartitionState::new(log_start), seek, None))
}

/// Checkpoint files of a partition, oldest first (names are zero-padded offsets).
async fn checkpoints(disk: &kappa_storage::io::Disk, dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match disk.list_dir(dir).await {
        Ok(entries) => entries
            .into_iter()
            .map(|e| dir.join(e.name))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("ckpt"))
            .collect(),
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "listing view checkpoints failed");
            Vec::new()
        }
    };
    files.sort();
    files
}

/// (Key, window) groups a checkpoint's snapshot copies per step; the task yields to the shard
/// between steps. A step of this many small groups takes well under a millisecond; a step of
/// 2,048 keys (every window of each) held the shard 2-19 ms in `kappa-bench mixed`'s view of
/// 10,000 keys x 47 windows.
const SNAPSHOT_STEP_CELLS: usize = 1024;

/// Starts a checkpoint of the partition's state as it is now: copies it (in steps, yielding, see
/// `take_snapshot`) and returns; the fold goes on while the log syncs, the copy is encoded on the
/// blocking pool and the file is written (a task in the maintenance queue), as `checkpoint` does
/// it. One at a time per partition: while one is being written a due
/// checkpoint is skipped, and the first due batch after it ends takes the next one.
///
/// Why: a fold that waited for each checkpoint (the log's fdatasync, then the file's fsyncs, all
/// on one blocking-pool thread shared with every other partition of the shard) folded at most
/// `checkpoint_every_records` per checkpoint latency, whatever the CPU. On a busy disk that is
/// below what a producer appends without waiting for syncs, and a rebuild chasing the live tail
/// never caught up (`views::a_rebuild_catches_up_with_a_flat_out_producer_when_checkpoints_are_slow`).
pub(crate) async fn checkpoint_in_background(
    shard: &Shard,
    log: &Rc<PartitionLog>,
    vp: &Rc<ViewPartition>,
) {
    let Ok(permit) = vp.checkpoint_slot.try_acquire_static_permit(1) else {
        return;
    };
    // The copy is the only part the fold waits for: a cut at one offset, taken a step at a time
    // (the caller is the partition's only writer and does not fold meanwhile).
    let Some(snapshot) = take_snapshot(vp).await else {
        return;
    };
    let dir = vp.version.partition_dir(vp.partition);
    let offset = snapshot.next_offset();
    let path = dir.join(format!("{offset:020}.ckpt"));
    // Taken now: a failed or skipped write gives them back, so the next one comes as soon.
    let since = vp.since_checkpoint.replace(0);
    let (log, weak, disk) = (log.clone(), Rc::downgrade(vp), vp.version.entry.disk.clone());
    let task = async move {
        let _permit = permit;
        // A partition dropped or stopped meanwhile writes nothing (its directory may be gone).
        let live = || weak.upgrade().filter(|vp| !vp.stopped.get());
        let result = match log.sync().await {
            // A checkpoint must never cover records a crash could still lose.
            Err(e) => Err(format!("sync before a view checkpoint failed: {e}")),
            Ok(()) if live().is_none() => Err(String::new()),
            Ok(()) => {
                let encoded = {
                    let path = path.clone();
                    glommio::executor().spawn_blocking(move || snapshot.encode(&path)).await
                };
                match encoded {
                    Ok(bytes) => {
                        write_checkpoint(&disk, &dir, &path, bytes).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let Some(vp) = weak.upgrade() else { return };
        match result {
            Ok(()) => vp.checkpointed.set(Some(offset)),
            Err(reason) => {
                if !reason.is_empty() {
                    tracing::error!(view = %vp.version.view, partition = vp.partition, %reason,
                        "view checkpoint failed");
                }
                vp.since_checkpoint.set(vp.since_checkpoint.get() + since);
            }
        }
    };
    glommio::spawn_local_into(task, shard.maintenance_queue())
        .expect("the maintenance queue exists")
        .detach();
}

/// Copies the partition's state a step at a time, with a yield between steps, so no checkpoint
/// holds the shard for long. The copy is a consistent cut at one offset: the caller is the
/// partition's only writer and does not fold while it copies, which `Snapshot::covers` checks
/// after every yield, and each step as far as it can (`Step::Moved`): `None`, and nothing
/// written, if the state moved anyway.
async fn take_snapshot(vp: &ViewPartition) -> Option<state::Snapshot> {
    let was = vp.activity.replace(Activity::CheckpointWrite);
    let mut snapshot =
        state::Snapshot::begin(vp.version.checkpoint_of(vp.partition), &vp.state.borrow());
    loop {
        {
            let st = vp.state.borrow();
            if !snapshot.covers(&st) {
                tracing::error!(view = %vp.version.view, partition = vp.partition,
                    "the view state changed during its checkpoint; checkpoint skipped");
                vp.activity.set(was);
                return None;
            }
            match snapshot.copy_more(&st, SNAPSHOT_STEP_CELLS) {
                state::Step::Done => break,
                state::Step::More => {}
                state::Step::Moved => {
                    tracing::error!(view = %vp.version.view, partition = vp.partition,
                        "the view state's groups changed during its checkpoint; skipped");
                    vp.activity.set(was);
                    return None;
                }
            }
        }
        glommio::yield_if_needed().await;
    }
    vp.activity.set(was);
    Some(snapshot)
}

/// The file work of a checkpoint: the directory, the file (temp, fsync, rename, directory
/// fsync), then all but the newest two removed.
async fn write_checkpoint(
    disk: &kappa_storage::io::Disk,
    dir: &Path,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), crate::Error> {
    disk.create_dir_all(dir).await?;
    disk.write_file_atomic_owned(path, bytes).await?;
    let files = checkpoints(disk, dir).await;
    for old in files.iter().take(files.len().saturating_sub(2)) {
        // Not synced: an old checkpoint that comes back after a power cut is still valid.
        let _ = disk.remove_file(old).await;
    }
    Ok(())
}

/// Writes a checkpoint of the partition after making sure the log holds (synced) everything it
/// covers, then keeps only the newest two. Nothing here holds the shard for long: the state is
/// copied a step at a time with a yield between steps (`state::Snapshot`); the copy is encoded
/// on glommio's blocking pool; the file work (create the directory, temp file, fsync, rename,
/// fsync the directory, unlink old ones) goes through the seam, on the blocking pool on the real
/// disk. The copy is a consistent cut at one offset: this task is the partition's only writer and
/// does not fold while it checkpoints, which `Snapshot::covers` checks after every yield.
pub(crate) async fn checkpoint(log: &PartitionLog, vp: &ViewPartition) {
    let was = vp.activity.replace(Activity::CheckpointSync);
    // A checkpoint must never cover records a crash could still lose.
    if let Err(e) = log.sync().await {
        tracing::error!(error = %e, "sync before a view checkpoint failed");
        vp.activity.set(was);
        return;
    }
    vp.activity.set(Activity::CheckpointWrite);
    let dir = vp.version.partition_dir(vp.partition);
    let disk = &vp.version.entry.disk;
    let Some(snapshot) = take_snapshot(vp).await else {
        vp.activity.set(was);
        return;
    };
    let offset = snapshot.next_offset();
    let path = dir.join(format!("{offset:020}.ckpt"));
    let encoded = {
        let path = path.clone();
        glommio::executor().spawn_blocking(move || snapshot.encode(&path)).await
    };
    let result = match encoded {
        Ok(bytes) => write_checkpoint(disk, &dir, &path, bytes).await,
        Err(e) => Err(e),
    };
    vp.activity.set(was);
    match result {
        Ok(()) => {
            vp.since_checkpoint.set(0);
            vp.checkpointed.set(Some(offset));
        }
        Err(e) => tracing::error!(error = %e, "view checkpoint failed"),
    }
}

/// Takes a final checkpoint when the shard shuts down cleanly.
pub(crate) async fn final_checkpoint(log: &PartitionLog, vp: &ViewPartition) {
    // The one being written finishes first (two writers would race on the files); the permit is
    // kept, so none starts after this one.
    let _ = vp.checkpoint_slot.acquire(1).await;
    if vp.since_checkpoint.get() > 0 && vp.error.borrow().is_none() {
        checkpoint(log, vp).await;
    }
}
