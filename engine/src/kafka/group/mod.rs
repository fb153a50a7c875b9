//! Consumer groups: the coordinator of the groups a shard owns, and their committed offsets.
//!
//! A group belongs to the partition `xxh3(group) % partitions` of `__consumer_offsets`, and is
//! coordinated by the shard that owns that partition, as a Kafka broker coordinates the groups
//! of the offsets partitions it leads. Membership lives in memory (`state.rs`): after a restart
//! every group is empty and its consumers rejoin. Committed offsets are durable: each commit is
//! appended to the group's offsets partition with `synced` durability before it is acknowledged
//! (`store.rs`), and the shard replays its offsets partitions when the listener starts.

pub(crate) mod api;
mod state;
mod store;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::FutureExt;

use super::node::Node;
use super::util::{self, Event};
use state::{Group, Limits};

pub(crate) use store::load_offsets;

/// The partition of `__consumer_offsets` that holds `group`.
pub(crate) fn partition_for(group: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(group.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: String,
    pub(crate) commit_ms: i64,
    /// The incarnation of the topic it was committed for (`TopicMeta::incarnation`; `None` in
    /// a record written before incarnations were stored, until the reload adopts the topic's
    /// current one). A topic deleted and created again under the same name is another
    /// incarnation: OffsetFetch never hands out an offset committed for an older one, as Kafka
    /// removes a deleted topic's offsets.
    pub(crate) incarnation: Option<u64>,
}

impl Committed {
    /// Whether this offset belongs to the topic as it exists now.
    pub(crate) fn is_for(&self, node: &Node, topic: &str) -> bool {
        node.topic(topic).is_some_and(|meta| self.incarnation == Some(meta.incarnation))
    }
}

/// The groups and committed offsets of one shard.
pub(crate) struct Coordinator {
    pub(crate) groups: RefCell<BTreeMap<String, Group>>,
    /// (group, topic, partition) -> committed offset.
    pub(crate) offsets: RefCell<BTreeMap<(String, String, u32), Committed>>,
    /// Deadlines changed: the reaper recomputes its sleep.
    pub(crate) changed: Event,
    nonce: u64,
}

impl Coordinator {
    /// `nonce` (from the start time) keeps member ids from repeating across restarts: a consumer
    /// from before a restart could otherwise pass for a new member.
    pub(crate) fn new(nonce: u64) -> Self {
        Coordinator {
            groups: RefCell::new(BTreeMap::new()),
            offsets: RefCell::new(BTreeMap::new()),
            changed: Event::default(),
            nonce,
        }
    }
}

impl Coordinator {
    pub(crate) fn limits(node: &Node) -> Limits {
        let config = node.config();
        Limits {
            session_min: config.group_session_timeout_min,
            session_max: config.group_session_timeout_max,
            initial_delay: config.group_initial_rebalance_delay,
        }
    }

    /// Runs `f` on the group (created empty when new), then wakes the reaper.
    pub(crate) fn with_group<T>(&self, id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let result = {
            let mut groups = self.groups.borrow_mut();
            let group = groups.entry(id.to_string()).or_insert_with(|| Group::new(self.nonce));
            f(group)
        };
        self.changed.notify();
        result
    }

    /// Runs `f` on an existing group.
    pub(crate) fn existing<T>(&self, id: &str, f: impl FnOnce(&mut Group) -> T) -> Option<T> {
        let result = self.groups.borrow_mut().get_mut(id).map(f);
        self.changed.notify();
        result
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.groups.borrow().values().filter_map(Group::next_deadline).min()
    }

    fn tick(&self, now: Instant) {
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            group.tick(now);
        }
        // An empty group keeps nothing worth remembering (its offsets live in `offsets`).
        groups.retain(|_, g| !(g.members.is_empty() && g.state == state::State::Empty));
    }

    /// Groups known here: with members, or with committed offsets.
    pub(crate) fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.groups.borrow().keys().cloned().collect();
        let offsets = self.offsets.borrow();
        let mut last: Option<&str> = None;
        for (group, _, _) in offsets.keys() {
            if last != Some(group.as_str()) {
                ids.push(group.clone());
                last = Some(group.as_str());
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Expires sessions and finishes overdue rebalances, sleeping until the next deadline (or a
/// change of the groups).
pub(crate) async fn reaper(node: Rc<Node>) {
    loop {
        if node.is_closing() {
            return;
        }
        let next = node.groups.next_deadline();
        let changed = async { node.groups.changed.next().await };
        match next {
            Some(deadline) => changed.or(util::sleep_until(deadline)).await,
            None => changed.or(node.until_closing()).await,
        }
        node.groups.tick(util::now());
    }
}
