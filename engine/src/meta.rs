//! Topic definitions on disk: `DIR/meta/topics/<name>.json`, written atomically.
//!
//! JSON because people read and edit these files, and they are tiny. The engine's shard count is
//! not stored: partitions are assigned to shards by hash at every start, so reopening with a
//! different shard count moves ownership and nothing else (each partition's files are its own).
//!
//! A durable marker (`<name>.deleting`) says a topic is not whole: it is being deleted, or being
//! created. Deleting a topic writes it first; creating one writes it before the first partition
//! file and removes it only after the definition is durable. While it is there, the deletion
//! completes, if need be at the next start (`finish_deletions`), so a crash never leaves a topic
//! half there, nor orphan partition files that a later topic of the same name would adopt.
//!
//! `DIR/meta/views/<name>.json` holds the highest version number a view of that name was ever
//! given (`next_view_version`): version numbers are never reused, so a directory or checkpoint a
//! dropped or deleted version left behind (a power cut before its removal was durable) never
//! belongs to a new version. It outlives `drop_view_version` and `delete_view`.
//!
//! Every file operation goes through the engine's `Disk` (the storage seam), so the simulated
//! disk cuts the power under metadata too. These functions block: they run on the engine's
//! control thread (the caller of `Engine::create_topic` and friends), never on a shard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kappa_storage::io::Disk;

use crate::config::TopicConfig;
use crate::Error;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TopicFile {
    format: u32,
    name: String,
    /// Which creation of the name this is (`new_incarnation`); 0 in files written before it
    /// existed. View checkpoints record it, so a topic deleted and created again under the same
    /// name never resumes a view from the old topic's state.
    #[serde(default)]
    incarnation: u64,
    #[serde(flatten)]
    config: TopicConfig,
}

/// A fresh topic incarnation: 64 random bits from the kernel, never 0 (which means "written
/// before incarnations existed").
pub(crate) fn new_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let random = if n == bytes.len() as isize {
        u64::from_le_bytes(bytes)
    } else {
        // No getrandom (very old kernels): still distinct per creation within this process and
        // across processes.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = u64::from(std::process::id());
        let addr = &bytes as *const _ as u64;
        xxhash_rust::xxh3::xxh3_64(
            &[pid.to_le_bytes(), count.to_le_bytes(), addr.to_le_bytes()].concat(),
        )
    };
    random.max(1)
}

const TOPIC_FORMAT: u32 = 1;

fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("topics")
}

/// Checks a topic name: it becomes a directory name.
pub fn validate_topic_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::BadTopicName { topic: name.to_string(), reason });
    if name.is_empty() || name.len() > 249 {
        return bad("must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

pub fn write_topic(
    disk: &Disk,
    data_dir: &Path,
    name: &str,
    config: &TopicConfig,
    incarnation: u64,
) -> Result<(), Error> {
    let dir = topics_dir(data_dir);
    disk.create_dir_all_blocking(&dir)?;
    let file = TopicFile {
        format: TOPIC_FORMAT,
        name: name.to_string(),
        incarnation,
        config: config.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("a topic definition serializes");
    disk.write_file_atomic_blocking(&dir.join(format!("{name}.json")), &bytes)?;
    Ok(())
}

/// Every topic of the data dir: its definition and its incarnation.
pub fn read_topics(
    disk: &Disk,
    data_dir: &Path,
) -> Result<BTreeMap<String, (TopicConfig, u64)>, Error> {
    let dir = topics_dir(data_dir);
    let mut topics = BTreeMap::new();
    let entries = match disk.list_dir_blocking(&dir) {
        Ok(entries) => entries,
        Err(e) if e.is_not_found() => return Ok(topics),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = dir.join(&entry.name);
        if entry.is_dir || path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = disk.read_file_blocking(&path)?;
        let file: TopicFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Meta { path: path.clone(), reason: e.to_string() })?;
        if file.format != TOPIC_FORMAT {
            return Err(Error::Meta { path, reason: format!("unknown format {}", file.format) });
        }
        validate_topic_name(&file.name)
            .map_err(|e| Error::Meta { path: path.clone(), reason: e.to_string() })?;
        if file.config.partitions == 0 {
            return Err(Error::Meta {
                path,
                reason: "a topic needs at least one partition".into(),
            });
        }
        topics.insert(file.name, (file.config, file.incarnation));
    }
    Ok(topics)
}

const DELETING_EXTENSION: &str = "deleting";

fn deleting_marker(data_dir: &Path, name: &str) -> PathBuf {
    topics_dir(data_dir).join(format!("{name}.{DELETING_EXTENSION}"))
}

/// Records durably that `name` is not whole (being deleted or created): from now on, unless
/// `clear_marker` removes the marker, the deletion of whatever exists of it completes.
pub fn mark_deleting(disk: &Disk, data_dir: &Path, name: &str) -> Result<(), Error> {
    disk.create_dir_all_blocking(&topics_dir(data_dir))?;
    disk.write_file_atomic_blocking(&deleting_marker(data_dir, name), b"")?;
    Ok(())
}

/// Removes the marker of a topic whose creation completed (its definition is durable), and makes
/// that durable: the topic is whole.
pub fn clear_marker(disk: &Disk, data_dir: &Path, name: &str) -> Result<(), Error> {
    disk.remove_file_blocking(&deleting_marker(data_dir, name))?;
    disk.sync_dir_blocking(&topics_dir(data_dir))?;
    Ok(())
}

/// Removes a topic's partition files, then its definition, then its deletion marker, each step
/// made durable before the next. Idempotent: a crash anywhere leaves the marker, and this runs
/// again at the next start.
pub fn finish_deletion(disk: &Disk, data_dir: &Path, name: &str) -> Result<(), Error> {
    let ignore_missing = |r: Result<(), kappa_storage::Error>| match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    };
    let topic_dir = kappa_storage::paths::partition_dir(data_dir, name, 0)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("topics").join(name));
    disk.remove_dir_all_blocking(&topic_dir)?;
    if let Some(parent) = topic_dir.parent() {
        if disk.metadata_blocking(parent)?.is_some() {
            disk.sync_dir_blocking(parent)?;
        }
    }
    let dir = topics_dir(data_dir);
    let definition = dir.join(format!("{name}.json"));
    ignore_missing(disk.remove_file_blocking(&definition))?;
    disk.sync_dir_blocking(&dir)?;
    let marker = deleting_marker(data_dir, name);
    ignore_missing(disk.remove_file_blocking(&marker))?;
    disk.sync_dir_blocking(&dir)?;
    Ok(())
}

/// True while a deletion (or a creation) of `name` has been started and not finished.
pub fn is_deleting(disk: &Disk, data_dir: &Path, name: &str) -> Result<bool, Error> {
    Ok(disk.metadata_blocking(&deleting_marker(data_dir, name))?.is_some())
}

/// Completes every deletion (or undoes every creation) a crash interrupted; returns the names of
/// those topics. Also removes temp files a crash left behind in the metadata directory.
pub fn finish_deletions(disk: &Disk, data_dir: &Path) -> Result<Vec<String>, Error> {
    let dir = topics_dir(data_dir);
    let entries = match disk.list_dir_blocking(&dir) {
        Ok(entries) => entries,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = dir.join(&entry.name);
        let extension = path.extension().and_then(|e| e.to_str());
        if extension == Some(kappa_storage::io::TEMP_EXTENSION) && !entry.is_dir {
            let _ = disk.remove_file_blocking(&path);
            continue;
        }
        if extension != Some(DELETING_EXTENSION) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if validate_topic_name(name).is_err() {
            continue;
        }
        names.push(name.to_string());
    }
    names.sort();
    for name in &names {
        tracing::info!(topic = %name, "finishing a topic deletion (or creation) a crash interrupted");
        finish_deletion(disk, data_dir, name)?;
    }
    Ok(names)
}

/// `DIR/meta/views/<name>.json`: the highest version number a view of this name was ever given.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ViewVersionsFile {
    format: u32,
    view: String,
    last_version: u32,
}

const VIEW_VERSIONS_FORMAT: u32 = 1;

fn view_versions_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("meta").join("views").join(format!("{name}.json"))
}

/// The highest version number view `name` was ever given by `next_view_version` (0 if none).
pub(crate) fn last_view_version(disk: &Disk, data_dir: &Path, name: &str) -> Result<u32, Error> {
    let path = view_versions_path(data_dir, name);
    let bytes = match disk.read_file_blocking(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let file: ViewVersionsFile = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Meta { path: path.clone(), reason: e.to_string() })?;
    if file.format != VIEW_VERSIONS_FORMAT {
        return Err(Error::Meta { path, reason: format!("unknown format {}", file.format) });
    }
    if file.view != name {
        return Err(Error::Meta { path, reason: format!("names view {:?}", file.view) });
    }
    Ok(file.last_version)
}

/// Takes the number of a new version of view `name` and records it durably before anything of
/// that version exists (a file fsync, then its directory's): one past every number the view ever
/// had, whether recorded here, in its metadata (`known`, the newest version it lists) or as a
/// directory under `DIR/views/<name>` (data dirs from before this file existed). So a number is
/// never taken twice, across restarts, dropped versions and deleted views, and what an old
/// version left on disk is never resumed by a new one. Blocking (the engine's control thread);
/// called under the engine's metadata lock.
pub(crate) fn next_view_version(
    disk: &Disk,
    data_dir: &Path,
    name: &str,
    known: Option<u32>,
) -> Result<u32, Error> {
    let dir = data_dir.join("views").join(name);
    let on_disk = match disk.list_dir_blocking(&dir) {
        Ok(entries) => entries
            .iter()
            .filter(|e| e.is_dir)
            .filter_map(|e| e.name.to_str().and_then(|n| n.parse::<u32>().ok()))
            .max(),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let last =
        last_view_version(disk, data_dir, name)?.max(known.unwrap_or(0)).max(on_disk.unwrap_or(0));
    let path = view_versions_path(data_dir, name);
    let number = last.checked_add(1).ok_or_else(|| Error::Meta {
        path: path.clone(),
        reason: format!("view {name:?} used every version number"),
    })?;
    let file = ViewVersionsFile {
        format: VIEW_VERSIONS_FORMAT,
        view: name.to_string(),
        last_version: number,
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("a view's version mark serializes");
    if let Some(parent) = path.parent() {
        disk.create_dir_all_blocking(parent)?;
    }
    disk.write_file_atomic_blocking(&path, &bytes)?;
    Ok(number)
}
