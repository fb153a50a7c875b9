//! The topic half of `Engine`: create, delete and grow topics, open their partitions on their
//! shards, and answer offsets queries. Every change runs under `Inner::meta_lock` (see the
//! parent module's doc), so a topic is visible only once all its partitions exist, and a create
//! that fails part way removes what it made.

use crate::config::TopicConfig;
use crate::meta;
use crate::metrics::PartitionMetrics;
use crate::router::shard_for;
use crate::shard::Request;
use crate::sync::atomic::Ordering;
use crate::Error;
use std::sync::Arc;

use super::{Engine, TopicMeta};

impl Engine {
    /// Creates a topic with `config.partitions` partitions; its definition persists in the data dir.
    ///
    /// Atomic: concurrent creators of one name see exactly one winner (the others get
    /// `TopicExists` with the winner's partition count); the topic becomes visible only once every
    /// partition is open and its definition is durable; a create that fails part way leaves
    /// nothing behind (and a crash part way is undone at the next start).
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), Error> {
        meta::validate_topic_name(name)?;
        if config.partitions == 0 {
            return Err(Error::Config { field: "partitions", reason: "must be at least 1".into() });
        }
        if let Some(keyed) = config.key_partitions.filter(|k| *k == 0 || *k > config.partitions) {
            return Err(Error::Config {
                field: "key_partitions",
                reason: format!(
                    "{keyed} is not between 1 and the {} partitions",
                    config.partitions
                ),
            });
        }
        let _meta = self.inner.lock_meta();
        if let Ok(existing) = self.inner.topic(name) {
            return Err(Error::TopicExists {
                topic: name.to_string(),
                partitions: existing.config.partitions,
            });
        }
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        if meta::is_deleting(disk, data_dir, name)? {
            // A deletion of the same name failed half way: finish it before reusing the name.
            meta::finish_deletion(disk, data_dir, name)?;
        }
        // The marker first: until it goes, a crash undoes this create at the next start.
        let incarnation = meta::new_incarnation();
        let created = meta::mark_deleting(disk, data_dir, name).and_then(|()| {
            let shards = self.open_partitions(&Arc::from(name), &config, 0)?;
            meta::write_topic(disk, data_dir, name, &config, incarnation)?;
            meta::clear_marker(disk, data_dir, name)?;
            Ok(shards)
        });
        match created {
            Ok(shards) => {
                self.register_topic(name, config, shards, incarnation);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "creating a topic failed; removing what it made");
                self.close_partitions(name, 0..config.partitions);
                if let Err(cleanup) = meta::finish_deletion(disk, data_dir, name) {
                    // The marker stays: the next start finishes the removal.
                    tracing::error!(topic = name, error = %cleanup,
                        "removing a failed topic create failed; the next start finishes it");
                }
                Err(e)
            }
        }
    }

    /// Closes (and forgets) partitions of a topic that is not in the registry: the cleanup of a
    /// failed create. Partitions that never opened are skipped by their shards.
    fn close_partitions(&self, name: &str, partitions: std::ops::Range<u32>) {
        let topic: Arc<str> = Arc::from(name);
        for partition in partitions {
            let shard = usize::from(shard_for(name, partition, self.shard_count()).0);
            let result = self.inner.call(shard, |reply| Request::Close {
                topic: topic.clone(),
                partition,
                reply,
            });
            if let Err(e) = result {
                tracing::warn!(topic = name, partition, error = %e, "closing a partition of a failed create failed");
            }
        }
    }

    /// Deletes a topic: its partitions are closed on their shards, then its files and definition
    /// are removed. Refused while an open view reads it. A durable marker is written first, so a
    /// crash during the deletion finishes it at the next start; once this returns, the name may
    /// be used again, and the deletion is durable: a power cut brings back neither the topic nor
    /// any of its files, and leaves nothing to finish (each removal is followed by an fsync of
    /// its directory, the definition's before the marker's). Producers and consumers of the topic get `UnknownTopic` (consumers following
    /// it see their stream end).
    pub fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let topic = self.inner.topic(name)?;
        self.refuse_if_views_read(name)?;
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        meta::mark_deleting(disk, data_dir, name)?;
        self.inner.topics.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
        let mut first_error = None;
        for (partition, shard) in topic.shards.iter().enumerate() {
            let result = self.inner.call(*shard, |reply| Request::Close {
                topic: topic.name.clone(),
                partition: partition as u32,
                reply,
            });
            if let Err(e) = result {
                // Closing failed (say, a failed disk): the files go anyway, the log is gone.
                tracing::warn!(topic = name, partition, error = %e, "closing a deleted partition failed");
                first_error.get_or_insert(e);
            }
        }
        meta::finish_deletion(disk, data_dir, name)?;
        tracing::info!(topic = name, partitions = topic.config.partitions, "topic deleted");
        match first_error {
            Some(Error::ShutDown) => Err(Error::ShutDown),
            _ => Ok(()),
        }
    }

    /// Grows a topic to `partitions` partitions. Keys do not move: keyed records keep routing
    /// over the partitions the topic had before it first grew (`TopicConfig::key_partitions`),
    /// so each key's records stay in one partition, in order, before and after. The new
    /// partitions take unkeyed records (round robin over all partitions) and records sent to a
    /// chosen partition. (Kafka instead rehashes keys over the new count, so a key's new records
    /// land in another partition than its old ones; to spread keys over more partitions here,
    /// re-key the topic into a new one by replay.) Refused while a view reads the topic: a view
    /// version covers the partitions it started with. The new partitions exist on their shards
    /// before the definition that names them is written and before producers can see them.
    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<(), Error> {
        let _meta = self.inner.lock_meta();
        let meta = self.inner.topic(name)?;
        let current = meta.config.partitions;
        if partitions <= current {
            return Err(Error::Config {
                field: "partitions",
                reason: format!(
                    "topic {name:?} has {current} partitions; a topic only grows (asked for {partitions})"
                ),
            });
        }
        self.refuse_if_views_read(name)?;
        let mut config = meta.config.clone();
        config.key_partitions = Some(meta.config.key_partition_count());
        config.partitions = partitions;
        let (disk, data_dir) = (self.inner.disk(), &self.inner.config.data_dir);
        let opened = self.open_partitions(&meta.name, &config, current).and_then(|shards| {
            meta::write_topic(disk, data_dir, name, &config, meta.incarnation).map(|()| shards)
        });
        let shards = match opened {
            Ok(shards) => shards,
            Err(e) => {
                // The definition still names `current` partitions: close the new ones so a later
                // attempt opens them afresh (their directories hold no record).
                self.close_partitions(name, current..partitions);
                return Err(e);
            }
        };
        let grown = Arc::new(TopicMeta {
            name: meta.name.clone(),
            config,
            shards,
            incarnation: meta.incarnation,
        });
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), grown);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(topic = name, from = current, to = partitions, "topic grown");
        Ok(())
    }

    /// Start and end offsets and size of every partition of a topic, in partition order (the
    /// requests go to every shard at once).
    pub fn topic_offsets(&self, topic: &str) -> Result<Vec<PartitionMetrics>, Error> {
        let meta = self.inner.topic(topic)?;
        let mut waiting = Vec::with_capacity(meta.shards.len());
        for (partition, shard) in meta.shards.iter().enumerate() {
            let (reply, receiver) = flume::bounded(1);
            self.inner.send_blocking(
                *shard,
                Request::Offsets { topic: meta.name.clone(), partition: partition as u32, reply },
            )?;
            waiting.push((*shard, receiver));
        }
        waiting
            .into_iter()
            .map(|(shard, receiver)| self.inner.link(shard).recv(&receiver))
            .collect()
    }

    /// Creates the topic unless it exists (with any partition count); returns its partition count.
    pub fn ensure_topic(&self, name: &str, config: TopicConfig) -> Result<u32, Error> {
        match self.inner.topic(name) {
            Ok(existing) => Ok(existing.config.partitions),
            Err(Error::UnknownTopic { .. }) => {
                let partitions = config.partitions;
                match self.create_topic(name, config) {
                    Ok(()) => Ok(partitions),
                    // Another thread created it first: its count is the topic's.
                    Err(Error::TopicExists { partitions, .. }) => Ok(partitions),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Reopens a topic found in the data dir at start.
    pub(super) fn open_topic(
        &self,
        name: &str,
        config: TopicConfig,
        incarnation: u64,
    ) -> Result<(), Error> {
        let shards = self.open_partitions(&Arc::from(name), &config, 0)?;
        self.register_topic(name, config, shards, incarnation);
        Ok(())
    }

    fn register_topic(
        &self,
        name: &str,
        config: TopicConfig,
        shards: Vec<usize>,
        incarnation: u64,
    ) {
        let meta = Arc::new(TopicMeta { name: Arc::from(name), config, shards, incarnation });
        self.inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), meta);
        self.inner.topics_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Opens partitions `from..config.partitions` of a topic on their shards (in parallel across
    /// shards), records what their recovery cut in the open report, and returns the shard of
    /// every partition of the topic.
    fn open_partitions(
        &self,
        topic: &Arc<str>,
        config: &TopicConfig,
        from: u32,
    ) -> Result<Vec<usize>, Error> {
        let shard_count = self.shard_count();
        let shards: Vec<usize> = (0..config.partitions)
            .map(|p| usize::from(shard_for(topic, p, shard_count).0))
            .collect();
        let log_config = config.log_config(&self.inner.config.log);
        let mut waiting = Vec::new();
        let mut first_error = None;
        for partition in from..config.partitions {
            let shard = shards[partition as usize];
            let (reply, receiver) = flume::bounded(1);
            let sent = self.inner.send_blocking(
                shard,
                Request::Open {
                    topic: topic.clone(),
                    partition,
                    config: log_config.clone(),
                    reply,
                },
            );
            if let Err(e) = sent {
                // Say, a dead shard. The opens already sent still run on their shards: the
                // caller's cleanup must not remove the topic's files under them (an open that
                // finished after it recreated the partition's directory, and left a log open
                // on the shard for the next topic of that name to take over).
                first_error = Some(e);
                break;
            }
            waiting.push((partition, shard, receiver));
        }
        // Every open sent is answered (done, failed, or its shard died) before this returns.
        for (partition, shard, receiver) in waiting {
            match self.inner.link(shard).recv(&receiver) {
                Ok(recovery) => self.inner.report().record(topic, partition, recovery),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(shards), Err)
    }

    pub(crate) fn check_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<TopicMeta>, Error> {
        let meta = self.inner.topic(topic)?;
        if partition >= meta.config.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: meta.config.partitions,
            });
        }
        Ok(meta)
    }

    /// `TopicInUse`, naming the views, when any view reads topic `name`: deleting or growing a
    /// topic under a view would change what the view folds.
    fn refuse_if_views_read(&self, name: &str) -> Result<(), Error> {
        let views = self.inner.views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let readers: Vec<String> = views
            .iter()
            .filter(|(_, entry)| entry.topic == name)
            .map(|(view, _)| view.clone())
            .collect();
        if readers.is_empty() {
            return Ok(());
        }
        Err(Error::TopicInUse { topic: name.to_string(), views: readers })
    }
}
