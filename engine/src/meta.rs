//! Topic definitions on disk: `DIR/meta/topics/<name>.json`, written atomically.
//!
//! JSON because people read and edit these files, and they are tiny. The engine's shard count is
//! not stored: partitions are assigned to shards by hash at every start, so reopening with a
//! different shard count moves ownership and nothing else (each partition's files are its own).
//!
//! Deleting a topic first writes a durable marker (`<name>.deleting`); from then on the deletion
//! completes, if need be at the next start (`finish_deletions`), so a crash never leaves a topic
//! half there, nor orphan partition files that a later topic of the same name would adopt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::TopicConfig;
use crate::Error;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TopicFile {
    format: u32,
    name: String,
    #[serde(flatten)]
    config: TopicConfig,
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

pub fn write_topic(data_dir: &Path, name: &str, config: &TopicConfig) -> Result<(), Error> {
    let dir = topics_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        op: "create dir",
        path: dir.clone(),
        source: e,
    })?;
    let file = TopicFile { format: TOPIC_FORMAT, name: name.to_string(), config: config.clone() };
    let bytes = serde_json::to_vec_pretty(&file).expect("a topic definition serializes");
    kappa_storage::io::write_file_atomic(&dir.join(format!("{name}.json")), &bytes)?;
    Ok(())
}

pub fn read_topics(data_dir: &Path) -> Result<BTreeMap<String, TopicConfig>, Error> {
    let dir = topics_dir(data_dir);
    let mut topics = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(topics),
        Err(e) => return Err(Error::Io { op: "list", path: dir, source: e }),
    };
    for entry in entries {
        let path =
            entry.map_err(|e| Error::Io { op: "list", path: dir.clone(), source: e })?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::Io {
            op: "read",
            path: path.clone(),
            source: e,
        })?;
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
        topics.insert(file.name, file.config);
    }
    Ok(topics)
}

const DELETING_EXTENSION: &str = "deleting";

fn deleting_marker(data_dir: &Path, name: &str) -> PathBuf {
    topics_dir(data_dir).join(format!("{name}.{DELETING_EXTENSION}"))
}

/// Records durably that `name` is being deleted: after this the deletion always completes.
pub fn mark_deleting(data_dir: &Path, name: &str) -> Result<(), Error> {
    kappa_storage::io::write_file_atomic(&deleting_marker(data_dir, name), b"")?;
    Ok(())
}

/// Removes a topic's partition files, then its definition, then its deletion marker, each step
/// made durable before the next. Idempotent: a crash anywhere leaves the marker, and this runs
/// again at the next start.
pub fn finish_deletion(data_dir: &Path, name: &str) -> Result<(), Error> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| Error::Io { op, path, source: e }
    };
    let ignore_missing = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let topic_dir = kappa_storage::paths::partition_dir(data_dir, name, 0)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("topics").join(name));
    ignore_missing(std::fs::remove_dir_all(&topic_dir)).map_err(io("remove", &topic_dir))?;
    if let Some(parent) = topic_dir.parent().filter(|p| p.exists()) {
        kappa_storage::io::Disk::Dma.sync_dir_blocking(parent)?;
    }
    let dir = topics_dir(data_dir);
    let definition = dir.join(format!("{name}.json"));
    ignore_missing(std::fs::remove_file(&definition)).map_err(io("remove", &definition))?;
    kappa_storage::io::Disk::Dma.sync_dir_blocking(&dir)?;
    let marker = deleting_marker(data_dir, name);
    ignore_missing(std::fs::remove_file(&marker)).map_err(io("remove", &marker))?;
    kappa_storage::io::Disk::Dma.sync_dir_blocking(&dir)?;
    Ok(())
}

/// True while a deletion of `name` has been started and not finished.
pub fn is_deleting(data_dir: &Path, name: &str) -> bool {
    deleting_marker(data_dir, name).exists()
}

/// Completes every deletion a crash interrupted; returns the names of those topics.
pub fn finish_deletions(data_dir: &Path) -> Result<Vec<String>, Error> {
    let dir = topics_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { op: "list", path: dir, source: e }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let path =
            entry.map_err(|e| Error::Io { op: "list", path: dir.clone(), source: e })?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(DELETING_EXTENSION) {
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
        tracing::info!(topic = %name, "finishing a topic deletion interrupted by a crash");
        finish_deletion(data_dir, name)?;
    }
    Ok(names)
}
