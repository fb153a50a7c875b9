//! Where things live in a data dir, and how segment file names encode base offsets.

use std::path::{Path, PathBuf};

use crate::io::{DirEntry, Disk};
use crate::Error;

/// Extension of segment files.
pub const SEGMENT_EXTENSION: &str = "log";
/// Extension of the sparse offset/time index written when a segment is sealed.
pub const INDEX_EXTENSION: &str = "index";

/// `DIR/topics/<topic>/<partition>`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join("topics").join(topic).join(partition.to_string())
}

/// `<base_offset:020>.log`: zero-padded so lexical order is offset order.
pub fn segment_path(partition_dir: &Path, base_offset: u64) -> PathBuf {
    partition_dir.join(format!("{base_offset:020}.{SEGMENT_EXTENSION}"))
}

pub fn index_path(partition_dir: &Path, base_offset: u64) -> PathBuf {
    partition_dir.join(format!("{base_offset:020}.{INDEX_EXTENSION}"))
}

/// The base offset a segment or index file name encodes, if it is one of ours.
pub fn parse_base_offset(path: &Path, extension: &str) -> Option<u64> {
    if path.extension()?.to_str()? != extension {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The segment files among the entries of a partition dir, sorted by base offset.
pub fn segments_in(partition_dir: &Path, entries: &[DirEntry]) -> Vec<(u64, PathBuf)> {
    let mut segments: Vec<(u64, PathBuf)> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| partition_dir.join(&e.name))
        .filter_map(|path| Some((parse_base_offset(&path, SEGMENT_EXTENSION)?, path)))
        .collect();
    segments.sort();
    segments
}

/// The segment files of a partition dir, sorted by base offset (blocking; for tools).
pub fn list_segments(partition_dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    Ok(segments_in(partition_dir, &Disk::Dma.list_dir_blocking(partition_dir)?))
}

/// Every partition dir under a data dir, as (topic, partition, path), sorted (blocking; tools).
pub fn list_partitions(data_dir: &Path) -> Result<Vec<(String, u32, PathBuf)>, Error> {
    let disk = Disk::Dma;
    let mut partitions = Vec::new();
    let topics = data_dir.join("topics");
    if disk.metadata_blocking(&topics)?.is_none() {
        return Ok(partitions);
    }
    for topic in disk.list_dir_blocking(&topics)? {
        if !topic.is_dir {
            continue;
        }
        let name = topic.name.to_string_lossy().into_owned();
        for partition in disk.list_dir_blocking(&topics.join(&topic.name))? {
            let Ok(number) = partition.name.to_string_lossy().parse::<u32>() else {
                continue;
            };
            if partition.is_dir {
                partitions.push((
                    name.clone(),
                    number,
                    topics.join(&topic.name).join(&partition.name),
                ));
            }
        }
    }
    partitions.sort();
    Ok(partitions)
}
