//! Topic definitions on disk: `DIR/meta/topics/<name>.json`, written atomically.
//!
//! JSON because people read and edit these files, and they are tiny. The engine's shard count is
//! not stored: partitions are assigned to shards by hash at every start, so reopening with a
//! different shard count moves ownership and nothing else (each partition's files are its own).

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
