//! Committed offsets against the topics they are for: a topic deleted and created again under
//! the same name is another topic, and a consumer group never gets the old one's offsets from
//! it, before or after a restart (Kafka removes a deleted topic's offsets).

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kappa_engine::kafka::client::Client;

use super::*;
use crate::serve::Server;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn create(c: &mut Client, topic: &str, partitions: i32) {
    let t = CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    let r: CreateTopicsResponse = c
        .call(5, &CreateTopicsRequest::default().with_topics(vec![t]).with_timeout_ms(5000))
        .expect("create");
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

fn delete(c: &mut Client, topic: &str) {
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![DeleteTopicState::default().with_name(Some(name(topic)))]);
    let r: DeleteTopicsResponse = c.call(6, &request).expect("delete");
    assert_eq!(r.responses[0].error_code, 0, "delete {topic}");
}

/// A simple commit (no member, generation -1) of `offset` for `topic`/`partition`.
fn commit(c: &mut Client, group: &str, topic: &str, partition: i32, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(s(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)])]);
    let r: OffsetCommitResponse = c.call(8, &request).expect("commit");
    r.topics[0].partitions[0].error_code
}

/// (topic, partition, offset) of every committed offset OffsetFetch returns: for the named
/// topic's partitions 0 and 1 (`Some`), or all of the group's (`None`).
fn fetched(c: &mut Client, group: &str, topic: Option<&str>) -> Vec<(String, i32, i64)> {
    let topics = topic.map(|t| {
        vec![OffsetFetchRequestTopic::default()
            .with_name(name(t))
            .with_partition_indexes(vec![0, 1])]
    });
    let r: OffsetFetchResponse = c
        .call(
            7,
            &OffsetFetchRequest::default().with_group_id(GroupId(s(group))).with_topics(topics),
        )
        .expect("offset fetch");
    assert_eq!(r.error_code, 0);
    let mut got: Vec<(String, i32, i64)> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.committed_offset))
        })
        .collect();
    got.sort();
    got
}

#[test]
fn a_deleted_topics_offsets_never_reach_its_successor() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), FAST_GROUPS, &[]);
    let mut c = connect(&server);
    create(&mut c, "t", 2);
    create(&mut c, "kept", 1);
    assert_eq!(commit(&mut c, "g", "t", 0, 42), 0);
    assert_eq!(commit(&mut c, "g", "t", 1, 7), 0);
    assert_eq!(commit(&mut c, "g", "kept", 0, 3), 0);
    let t = |p0: i64, p1: i64| vec![("t".to_string(), 0, p0), ("t".to_string(), 1, p1)];
    assert_eq!(fetched(&mut c, "g", Some("t")), t(42, 7));

    // Deleted and created again: an empty topic of the same name, with nothing committed.
    delete(&mut c, "t");
    assert_eq!(commit(&mut c, "g", "t", 0, 43), 3, "UNKNOWN_TOPIC_OR_PARTITION while gone");
    create(&mut c, "t", 2);
    assert_eq!(fetched(&mut c, "g", Some("t")), t(-1, -1), "the old topic's offsets");
    assert_eq!(fetched(&mut c, "g", None), vec![("kept".to_string(), 0, 3)]);
    assert_eq!(commit(&mut c, "g", "t", 1, 2), 0, "the new topic's own commit");
    assert_eq!(fetched(&mut c, "g", Some("t")), t(-1, 2));
    // Deleted again and not created: nothing of it is listed.
    delete(&mut c, "kept");
    assert_eq!(fetched(&mut c, "g", None), vec![("t".to_string(), 1, 2)]);
    drop(c);
    assert!(server.stop().success());

    // The reload from `__consumer_offsets` keeps it so: the old records are still in the log.
    let server = Server::start(temp.path(), FAST_GROUPS, &[]);
    let mut c = connect(&server);
    assert_eq!(fetched(&mut c, "g", Some("t")), t(-1, 2));
    assert_eq!(fetched(&mut c, "g", None), vec![("t".to_string(), 1, 2)]);
    create(&mut c, "kept", 1);
    assert_eq!(fetched(&mut c, "g", None), vec![("t".to_string(), 1, 2)], "kept came back empty");
}
