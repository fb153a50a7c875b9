//! The group requests, each answered by the coordinator shard of its group.
//!
//! The connection's shard forwards the request's data to the coordinator (`Node::call`); a
//! JoinGroup or SyncGroup waits there until the rebalance answers it.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::state::{Join, Joined, Synced};
use super::store::{self, Key};
use super::{Committed, Coordinator};
use crate::kafka::codec::{code, NODE_ID};
use crate::kafka::node::Node;
use crate::kafka::util;

/// A topic's partitions and their committed offsets, as OffsetFetch answers them.
type TopicOffsets = (String, Vec<(i32, Option<Committed>)>);

/// Kafka's `offset.metadata.max.bytes`.
const METADATA_MAX: usize = 4096;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Who sent a request (JoinGroup records it; DescribeGroups shows it).
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) host: String,
}

/// Runs `work` on the coordinator of `group` with its offsets partition.
async fn on_coordinator<T, F, Fut>(node: &Rc<Node>, group: &str, work: F) -> Result<T, i16>
where
    F: FnOnce(Rc<Node>, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (partition, shard) = node.coordinator_of(group).ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
    node.call(shard, move |n| work(n, partition)).await.map_err(|_| code::COORDINATOR_NOT_AVAILABLE)
}

pub(crate) async fn find_coordinator(
    node: Rc<Node>,
    version: i16,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let host = s(node.shared.host.clone());
    let port = node.shared.port;
    // Key type 0 is a group; 1 (transactions) is not served.
    let error = if request.key_type == 0 { code::NONE } else { code::COORDINATOR_NOT_AVAILABLE };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                CoordinatorEntry::default()
                    .with_key(key)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(error)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_node_id(BrokerId(NODE_ID))
        .with_host(host)
        .with_port(port)
}

pub(crate) async fn join(
    node: Rc<Node>,
    version: i16,
    request: JoinGroupRequest,
    client: Client,
) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let joined = if group.is_empty() {
        Joined {
            error_code: code::INVALID_GROUP_ID,
            generation: -1,
            member_id,
            ..Joined::default()
        }
    } else {
        let session = std::time::Duration::from_millis(
            u64::try_from(request.session_timeout_ms).unwrap_or(0),
        );
        let rebalance = if version >= 1 {
            std::time::Duration::from_millis(
                u64::try_from(request.rebalance_timeout_ms).unwrap_or(0),
            )
        } else {
            session
        };
        let join = Join {
            member_id: member_id.clone(),
            instance_id: request.group_instance_id.map(|i| i.to_string()),
            client_id: client.id,
            client_host: client.host,
            session_timeout: session,
            rebalance_timeout: rebalance.max(session),
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
        };
        let id = group.clone();
        let outcome = on_coordinator(&node, &group, move |n, _| async move {
            let limits = Coordinator::limits(&n);
            let waiting = n.groups.with_group(&id, |g| g.join(join, &limits, util::now()));
            match waiting {
                Err(joined) => *joined,
                Ok(rx) => rx.recv_async().await.unwrap_or(Joined {
                    error_code: code::COORDINATOR_NOT_AVAILABLE,
                    generation: -1,
                    ..Joined::default()
                }),
            }
        })
        .await;
        outcome.unwrap_or_else(|error_code| Joined {
            error_code,
            generation: -1,
            member_id,
            ..Joined::default()
        })
    };
    let mut response = JoinGroupResponse::default()
        .with_error_code(joined.error_code)
        .with_generation_id(joined.generation)
        .with_leader(s(joined.leader))
        .with_member_id(s(joined.member_id));
    if version >= 7 {
        response.protocol_type = joined.protocol_type.map(s);
        response.protocol_name = joined.protocol.map(s);
    } else {
        response.protocol_name = Some(s(joined.protocol.unwrap_or_default()));
    }
    response.members = joined
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut member =
                JoinGroupResponseMember::default().with_member_id(s(id)).with_metadata(metadata);
            if version >= 5 {
                member.group_instance_id = instance.map(s);
            }
            member
        })
        .collect();
    response
}

pub(crate) async fn sync(
    node: Rc<Node>,
    version: i16,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = request.group_id.0.to_string();
    let member = request.member_id.to_string();
    let generation = request.generation_id;
    let assignments: Vec<(String, Bytes)> =
        request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let id = group.clone();
    let synced = on_coordinator(&node, &group, move |n, _| async move {
        let waiting = n
            .groups
            .existing(&id, |g| g.sync(&member, generation, assignments, util::now()))
            .unwrap_or(Err(Synced { error_code: code::UNKNOWN_MEMBER_ID, ..Synced::default() }));
        match waiting {
            Err(synced) => synced,
            Ok(rx) => rx.recv_async().await.unwrap_or(Synced {
                error_code: code::COORDINATOR_NOT_AVAILABLE,
                ..Synced::default()
            }),
        }
    })
    .await
    .unwrap_or_else(|error_code| Synced { error_code, ..Synced::default() });
    let mut response = SyncGroupResponse::default()
        .with_error_code(synced.error_code)
        .with_assignment(synced.assignment);
    if version >= 5 {
        response.protocol_type = synced.protocol_type.map(s);
        response.protocol_name = synced.protocol.map(s);
    }
    response
}

pub(crate) async fn heartbeat(
    node: Rc<Node>,
    _version: i16,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let group = request.group_id.0.to_string();
    let member = request.member_id.to_string();
    let generation = request.generation_id;
    let id = group.clone();
    let error = on_coordinator(&node, &group, move |n, _| async move {
        n.groups
            .existing(&id, |g| g.heartbeat(&member, generation, util::now()))
            .unwrap_or(code::UNKNOWN_MEMBER_ID)
    })
    .await
    .unwrap_or_else(|e| e);
    HeartbeatResponse::default().with_error_code(error)
}

pub(crate) async fn leave(
    node: Rc<Node>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let members: Vec<(String, Option<StrBytes>)> = if version >= 3 {
        request
            .members
            .into_iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id))
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let ids: Vec<String> = members.iter().map(|(m, _)| m.clone()).collect();
    let id = group.clone();
    let errors = on_coordinator(&node, &group, move |n, _| async move {
        ids.iter()
            .map(|m| {
                n.groups
                    .existing(&id, |g| g.leave(m, util::now()))
                    .unwrap_or(code::UNKNOWN_MEMBER_ID)
            })
            .collect::<Vec<i16>>()
    })
    .await;
    match errors {
        Err(error) => LeaveGroupResponse::default().with_error_code(error),
        Ok(errors) if version >= 3 => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(errors)
                .map(|((member, instance), error)| {
                    MemberResponse::default()
                        .with_member_id(s(member))
                        .with_group_instance_id(instance)
                        .with_error_code(error)
                })
                .collect(),
        ),
        Ok(errors) => LeaveGroupResponse::default()
            .with_error_code(errors.first().copied().unwrap_or(code::NONE)),
    }
}

pub(crate) async fn offset_commit(
    node: Rc<Node>,
    _version: i16,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let member = request.member_id.to_string();
    let generation = request.generation_id_or_member_epoch;
    // (topic, partition, offset, leader epoch, metadata) in request order.
    let mut wanted: Vec<(String, i32, i64, i32, String)> = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for topic in request.topics {
        let mut out = OffsetCommitResponseTopic::default().with_name(topic.name.clone());
        for p in topic.partitions {
            out.partitions.push(
                OffsetCommitResponsePartition::default().with_partition_index(p.partition_index),
            );
            wanted.push((
                topic.name.0.to_string(),
                p.partition_index,
                p.committed_offset,
                p.committed_leader_epoch,
                p.committed_metadata.map(|m| m.to_string()).unwrap_or_default(),
            ));
        }
        topics.push(out);
    }
    let id = group.clone();
    let errors = on_coordinator(&node, &group, move |n, partition| async move {
        let now = util::now();
        let check = n.groups.with_group(&id, |g| g.check_commit(&member, generation, now));
        if check != code::NONE {
            return vec![check; wanted.len()];
        }
        let commit_ms = n.now_ms();
        let mut errors = vec![code::NONE; wanted.len()];
        let mut entries: Vec<(Key, Committed)> = Vec::new();
        let mut committed_slots = Vec::new();
        for (slot, (topic, index, offset, leader_epoch, metadata)) in wanted.into_iter().enumerate()
        {
            // The offset is stamped with the incarnation of the topic seen here: if the topic
            // is deleted (and created again) before the record is appended, the record names
            // the old incarnation and is never fetched.
            let known = n
                .topic(&topic)
                .filter(|m| u32::try_from(index).is_ok_and(|i| i < m.config.partitions));
            errors[slot] = match known {
                None => code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(_) if metadata.len() > METADATA_MAX => code::OFFSET_METADATA_TOO_LARGE,
                Some(meta) => {
                    entries.push((
                        (id.clone(), topic, index as u32),
                        Committed {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_ms,
                            incarnation: Some(meta.incarnation),
                        },
                    ));
                    committed_slots.push(slot);
                    code::NONE
                }
            };
        }
        if let Err(error) = store::commit(&n, partition, entries).await {
            for slot in committed_slots {
                errors[slot] = error;
            }
        }
        errors
    })
    .await;
    let mut slot = 0;
    for topic in &mut topics {
        for p in &mut topic.partitions {
            p.error_code = match &errors {
                Ok(errors) => errors.get(slot).copied().unwrap_or(code::UNKNOWN_SERVER_ERROR),
                Err(error) => *error,
            };
            slot += 1;
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

pub(crate) async fn offset_fetch(
    node: Rc<Node>,
    version: i16,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    let wanted: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect()
    });
    let id = group.clone();
    let found = on_coordinator(&node, &group, move |n, _| async move {
        let offsets = n.groups.offsets.borrow();
        match wanted {
            None => {
                let from = (id.clone(), String::new(), 0u32);
                let mut all: Vec<TopicOffsets> = Vec::new();
                for ((g, topic, partition), c) in offsets.range(from..) {
                    if *g != id {
                        break;
                    }
                    if !c.is_for(&n, topic) {
                        continue;
                    }
                    match all.last_mut() {
                        Some((t, parts)) if t == topic => {
                            parts.push((*partition as i32, Some(c.clone())))
                        }
                        _ => all.push((topic.clone(), vec![(*partition as i32, Some(c.clone()))])),
                    }
                }
                all
            }
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let parts = partitions
                        .into_iter()
                        .map(|p| {
                            let c = u32::try_from(p).ok().and_then(|pu| {
                                offsets.get(&(id.clone(), topic.clone(), pu)).cloned()
                            });
                            let c = c.filter(|c| c.is_for(&n, &topic));
                            (p, c)
                        })
                        .collect();
                    (topic, parts)
                })
                .collect(),
        }
    })
    .await;
    let mut response = OffsetFetchResponse::default();
    match found {
        Err(error) => {
            if version >= 2 {
                response.error_code = error;
            }
        }
        Ok(found) => {
            response.topics = found
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let mut out = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                        .with_metadata(Some(s(c
                                            .as_ref()
                                            .map(|c| c.metadata.clone())
                                            .unwrap_or_default())));
                                    if version >= 5 {
                                        out.committed_leader_epoch =
                                            c.as_ref().map_or(-1, |c| c.leader_epoch);
                                    }
                                    out
                                })
                                .collect(),
                        )
                })
                .collect();
        }
    }
    response
}

pub(crate) async fn describe(
    node: Rc<Node>,
    version: i16,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let group = group_id.0.to_string();
        let id = group.clone();
        let described = on_coordinator(&node, &group, move |n, _| async move {
            let has_offsets = n.groups.group_ids().contains(&id);
            let groups = n.groups.groups.borrow();
            match groups.get(&id) {
                None if has_offsets => {
                    ("Empty".to_string(), String::new(), String::new(), Vec::new())
                }
                None => ("Dead".to_string(), String::new(), String::new(), Vec::new()),
                Some(g) => {
                    let protocol = g.protocol.clone().unwrap_or_default();
                    let members = g
                        .members
                        .values()
                        .map(|m| {
                            let metadata = m
                                .protocols
                                .iter()
                                .find(|(name, _)| *name == protocol)
                                .map_or_else(Bytes::new, |(_, md)| md.clone());
                            (
                                m.id.clone(),
                                m.instance_id.clone(),
                                m.client_id.clone(),
                                m.client_host.clone(),
                                metadata,
                                m.assignment.clone(),
                            )
                        })
                        .collect::<Vec<_>>();
                    (
                        g.state.name().to_string(),
                        g.protocol_type.clone().unwrap_or_default(),
                        protocol,
                        members,
                    )
                }
            }
        })
        .await;
        let mut out = DescribedGroup::default().with_group_id(GroupId(s(group)));
        match described {
            Err(error) => out.error_code = error,
            Ok((state, protocol_type, protocol, members)) => {
                out.group_state = s(state);
                out.protocol_type = s(protocol_type);
                out.protocol_data = s(protocol);
                out.members = members
                    .into_iter()
                    .map(|(id, instance, client_id, host, metadata, assignment)| {
                        let mut member = DescribedGroupMember::default()
                            .with_member_id(s(id))
                            .with_client_id(s(client_id))
                            .with_client_host(s(host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment);
                        if version >= 4 {
                            member.group_instance_id = instance.map(s);
                        }
                        member
                    })
                    .collect();
            }
        }
        groups.push(out);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(crate) async fn list(
    node: Rc<Node>,
    version: i16,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let states: Vec<String> = request.states_filter.iter().map(|s| s.to_string()).collect();
    let mut listed = Vec::new();
    let mut error = code::NONE;
    for shard in 0..node.shared.peers.len() {
        let found = node
            .call(shard, |n| async move {
                let ids = n.groups.group_ids();
                let groups = n.groups.groups.borrow();
                ids.into_iter()
                    .map(|id| {
                        let (state, protocol_type) =
                            groups.get(&id).map_or(("Empty".to_string(), String::new()), |g| {
                                (
                                    g.state.name().to_string(),
                                    g.protocol_type.clone().unwrap_or_default(),
                                )
                            });
                        (id, state, protocol_type)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        match found {
            Ok(found) => listed.extend(found),
            Err(_) => error = code::COORDINATOR_NOT_AVAILABLE,
        }
    }
    let groups = listed
        .into_iter()
        .filter(|(_, state, _)| states.is_empty() || states.contains(state))
        .map(|(id, state, protocol_type)| {
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_protocol_type(s(protocol_type));
            if version >= 4 {
                group.group_state = s(state);
            }
            group
        })
        .collect();
    ListGroupsResponse::default().with_error_code(error).with_groups(groups)
}
