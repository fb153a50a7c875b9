//! Committed offsets in `__consumer_offsets`: the record layout, the durable commit, the reload.
//!
//! One record per committed partition, the latest record of a key wins:
//!
//! ```text
//! key:   version u8 (=1) | group len u16 | group | topic len u16 | topic | partition u32
//! value: version u8 (=2) | offset i64 | leader epoch i32 | commit time ms i64
//!        | topic incarnation u64 | metadata len u32 | metadata (UTF-8)
//! ```
//! Big-endian integers. Version 1 values (no incarnation) are still read: the reload gives them
//! the incarnation of the topic that exists then (there is no other to tell).
//!
//! A deleted topic's offsets: each one names the incarnation of the topic it was committed for,
//! and a topic deleted and created again under the same name is a new incarnation, so its old
//! offsets are never fetched again, whichever front end deleted it and whenever the process
//! stopped (`Committed::is_for`). The reload keeps in memory only offsets of topics that exist
//! in the incarnation they name. The topic is an ordinary partitioned topic of the engine, so it is
//! checksummed, recovered and verified like any other; it is never compacted (each commit adds
//! a record; the reload keeps the last one per key).

use std::rc::Rc;

use kappa_storage::{Durability, ProducerInfo, Record, Seek};

use super::Committed;
use crate::kafka::codec::code;
use crate::kafka::node::Node;
use crate::kafka::OFFSETS_TOPIC;

/// The key's layout version.
const VERSION: u8 = 1;
/// The value's layout version written now (1 is still read).
const VALUE_VERSION: u8 = 2;

/// (group, topic, partition): what a committed offset is for.
pub(crate) type Key = (String, String, u32);

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn encode_key(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.0.len() + key.1.len());
    out.push(VERSION);
    put_str(&mut out, &key.0);
    put_str(&mut out, &key.1);
    out.extend_from_slice(&key.2.to_be_bytes());
    out
}

pub(crate) fn encode_value(c: &Committed) -> Vec<u8> {
    let mut out = Vec::with_capacity(33 + c.metadata.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&c.offset.to_be_bytes());
    out.extend_from_slice(&c.leader_epoch.to_be_bytes());
    out.extend_from_slice(&c.commit_ms.to_be_bytes());
    // Only offsets of an existing topic are committed, so there is always one; 0 would match
    // only a topic from before incarnations.
    out.extend_from_slice(&c.incarnation.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&(c.metadata.len() as u32).to_be_bytes());
    out.extend_from_slice(c.metadata.as_bytes());
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn string(&mut self, len: usize) -> Option<String> {
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// Decodes one record; `None` for anything this version did not write.
pub(crate) fn decode(key: &[u8], value: &[u8]) -> Option<(Key, Committed)> {
    let mut k = Cursor { bytes: key, pos: 0 };
    if k.array::<1>()?[0] != VERSION {
        return None;
    }
    let group_len = u16::from_be_bytes(k.array()?) as usize;
    let group = k.string(group_len)?;
    let topic_len = u16::from_be_bytes(k.array()?) as usize;
    let topic = k.string(topic_len)?;
    let partition = u32::from_be_bytes(k.array()?);
    let mut v = Cursor { bytes: value, pos: 0 };
    let value_version = v.array::<1>()?[0];
    if value_version != 1 && value_version != VALUE_VERSION {
        return None;
    }
    let offset = i64::from_be_bytes(v.array()?);
    let leader_epoch = i32::from_be_bytes(v.array()?);
    let commit_ms = i64::from_be_bytes(v.array()?);
    let incarnation = match value_version {
        1 => None,
        _ => Some(u64::from_be_bytes(v.array()?)),
    };
    let metadata_len = u32::from_be_bytes(v.array()?) as usize;
    let metadata = v.string(metadata_len)?;
    (k.pos == key.len() && v.pos == value.len()).then_some((
        (group, topic, partition),
        Committed { offset, leader_epoch, metadata, commit_ms, incarnation },
    ))
}

/// Replays the offsets partitions this shard owns into its coordinator.
pub(crate) async fn load_offsets(node: &Rc<Node>) -> Result<(), String> {
    let Some(meta) = node.topic(OFFSETS_TOPIC) else {
        return Err(format!("the topic {OFFSETS_TOPIC} does not exist"));
    };
    let mut loaded = 0u64;
    let mut skipped = 0u64;
    let mut stale = 0u64;
    for partition in 0..meta.config.partitions {
        if Node::owner(&meta, partition) != Some(node.index) {
            continue;
        }
        let Some(log) = node.shard.log(OFFSETS_TOPIC, partition) else {
            return Err(format!("{OFFSETS_TOPIC}/{partition} is not open on its shard"));
        };
        let mut reader = log.reader(Seek::Beginning).map_err(|e| e.to_string())?;
        while let Some(read) = reader.next_batch().await.map_err(|e| e.to_string())? {
            {
                let mut offsets = node.groups.offsets.borrow_mut();
                for record in read.records() {
                    match record.key().and_then(|k| decode(k, record.value())) {
                        Some((key, mut committed)) => {
                            // The latest record of a key wins, also a stale one: it removes
                            // what an older record of the key left.
                            let current = node.topic(&key.1).map(|meta| meta.incarnation);
                            if committed.incarnation.is_none() {
                                committed.incarnation = current;
                            }
                            if current.is_some() && committed.incarnation == current {
                                offsets.insert(key, committed);
                                loaded += 1;
                            } else {
                                offsets.remove(&key);
                                stale += 1;
                            }
                        }
                        None => skipped += 1,
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
    }
    if skipped > 0 {
        tracing::warn!(
            shard = node.index,
            skipped,
            "records of {OFFSETS_TOPIC} not in the committed-offset format were skipped"
        );
    }
    tracing::debug!(shard = node.index, loaded, stale, "committed offsets reloaded");
    Ok(())
}

/// Appends `entries` to the offsets partition (`synced`), and makes them visible to OffsetFetch
/// in commit order. The error is a Kafka error code for every entry.
pub(crate) async fn commit(
    node: &Rc<Node>,
    partition: u32,
    entries: Vec<(Key, Committed)>,
) -> Result<(), i16> {
    if entries.is_empty() {
        return Ok(());
    }
    let Some(log) = node.shard.log(OFFSETS_TOPIC, partition) else {
        return Err(code::COORDINATOR_NOT_AVAILABLE);
    };
    let encoded: Vec<(Vec<u8>, Vec<u8>)> =
        entries.iter().map(|(k, c)| (encode_key(k), encode_value(c))).collect();
    let now_ms = node.now_ms();
    let records: Vec<Record<'_>> = encoded
        .iter()
        .map(|(k, v)| Record::new(now_ms, Some(k.as_slice()), v.as_slice()))
        .collect();
    log.reserve().await;
    let ticket = match log.append_now(&records, ProducerInfo::default(), Durability::Synced, now_ms)
    {
        Ok(ticket) => ticket,
        Err(e) => {
            tracing::error!(error = %e, "appending committed offsets failed");
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        }
    };
    {
        let mut offsets = node.groups.offsets.borrow_mut();
        for (key, committed) in entries {
            offsets.insert(key, committed);
        }
    }
    log.wait(ticket).await.map_err(|e| {
        tracing::error!(error = %e, "syncing committed offsets failed");
        code::COORDINATOR_NOT_AVAILABLE
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let key = ("group-é".to_string(), "topic".to_string(), 7);
        let committed = Committed {
            offset: 42,
            leader_epoch: -1,
            metadata: "meta".into(),
            commit_ms: 5,
            incarnation: Some(0x0102_0304_0506_0708),
        };
        let (k, v) = (encode_key(&key), encode_value(&committed));
        assert_eq!(decode(&k, &v), Some((key.clone(), committed.clone())));
        // A version 1 value (no incarnation) is still read, with none.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&v[1..21]);
        v1.extend_from_slice(&v[29..]);
        let old = Committed { incarnation: None, ..committed.clone() };
        assert_eq!(decode(&k, &v1), Some((key, old)));
        for cut in 0..k.len() {
            assert_eq!(decode(&k[..cut], &v), None);
        }
        for cut in 0..v.len() {
            assert_eq!(decode(&k, &v[..cut]), None);
        }
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(decode(&k, &longer), None);
    }
}
