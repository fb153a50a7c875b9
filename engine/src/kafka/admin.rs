//! The control-plane requests: Metadata (with auto-creation), CreateTopics, DeleteTopics,
//! DescribeConfigs, InitProducerId.
//!
//! Creating and deleting topics wait on every shard (the engine opens or closes partitions
//! there, this one included, on their blocking pools), so they run on the Kafka control thread
//! (`Node::control`), serialized by one lock, never on a shard thread nor its blocking pool.

use std::rc::Rc;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, InitProducerIdRequest, InitProducerIdResponse,
    MetadataRequest, MetadataResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::codec::{code, LEADER_EPOCH, NODE_ID};
use super::node::Node;
use super::OFFSETS_TOPIC;
use crate::config::TopicConfig;
use crate::engine::TopicMeta;
use crate::Error;

fn str(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A stable id per topic name (Metadata v10+ carries topic ids; clients only compare them).
fn topic_id(name: &str) -> uuid::Uuid {
    uuid::Uuid::from_u128(xxhash_rust::xxh3::xxh3_128(name.as_bytes()) | 1)
}

fn describe_topic(meta: &TopicMeta, version: i16) -> MetadataResponseTopic {
    let partitions = (0..meta.config.partitions)
        .map(|p| {
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(NODE_ID))
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)]);
            if version >= 7 {
                partition.leader_epoch = LEADER_EPOCH;
            }
            partition
        })
        .collect();
    let mut topic = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str(&*meta.name))))
        .with_partitions(partitions);
    if version >= 1 {
        topic.is_internal = &*meta.name == OFFSETS_TOPIC;
    }
    if version >= 10 {
        topic.topic_id = topic_id(&meta.name);
    }
    topic
}

fn topic_error(name: &str, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str(name))))
        .with_error_code(error_code)
}

pub(crate) async fn metadata(
    node: Rc<Node>,
    version: i16,
    request: MetadataRequest,
) -> MetadataResponse {
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(str(node.shared.host.clone()))
        .with_port(node.shared.port);
    let mut response = MetadataResponse::default().with_brokers(vec![broker]);
    if version >= 1 {
        response.controller_id = BrokerId(NODE_ID);
    }
    if version >= 2 {
        response.cluster_id = Some(str(node.shared.cluster_id.clone()));
    }
    let requested: Option<Vec<String>> = match request.topics {
        None => None,
        Some(list) if version == 0 && list.is_empty() => None,
        Some(list) => Some(
            list.into_iter().filter_map(|t| t.name.map(|n| n.0.as_str().to_string())).collect(),
        ),
    };
    let Some(names) = requested else {
        response.topics =
            node.shared.inner.topic_list().iter().map(|m| describe_topic(m, version)).collect();
        return response;
    };
    let create =
        node.config().auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    for name in names {
        if let Some(meta) = node.topic(&name) {
            response.topics.push(describe_topic(&meta, version));
            continue;
        }
        if crate::meta::validate_topic_name(&name).is_err() {
            response.topics.push(topic_error(&name, code::INVALID_TOPIC_EXCEPTION));
            continue;
        }
        if !create {
            response.topics.push(topic_error(&name, code::UNKNOWN_TOPIC_OR_PARTITION));
            continue;
        }
        let mut config = node.config().topic_template.clone();
        config.partitions = node.config().default_partitions;
        let shared = node.shared.clone();
        let topic = name.clone();
        let created = node
            .control(move |engine| {
                let _serial =
                    shared.control_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match engine.ensure_topic(&topic, config) {
                    Ok(_) | Err(Error::TopicExists { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        match (created, node.topic(&name)) {
            (Ok(Ok(())), Some(meta)) => {
                tracing::info!(topic = %name, partitions = meta.config.partitions, "topic created on first use by a Kafka client");
                response.topics.push(describe_topic(&meta, version));
            }
            (Ok(Err(reason)), _) => {
                tracing::warn!(topic = %name, reason, "auto-creating a topic failed");
                response.topics.push(topic_error(&name, code::UNKNOWN_TOPIC_OR_PARTITION));
            }
            _ => response.topics.push(topic_error(&name, code::UNKNOWN_TOPIC_OR_PARTITION)),
        }
    }
    response
}

/// Applies a topic config from CreateTopics to a definition; `Err` names what is refused.
fn apply_config(config: &mut TopicConfig, name: &str, value: Option<&str>) -> Result<(), String> {
    let value = value.unwrap_or("");
    let number = || value.parse::<i64>().map_err(|_| format!("{name}={value:?} is not a number"));
    match name {
        "retention.ms" => {
            let v = number()?;
            config.retention_ms_max = (v >= 0).then_some(v);
        }
        "retention.bytes" => {
            let v = number()?;
            config.retention_bytes_max = u64::try_from(v).ok();
        }
        "segment.bytes" => {
            let v = number()?;
            if v < 1 << 20 {
                return Err(format!("segment.bytes={v} is below 1 MiB"));
            }
            config.segment_size_bytes_max = Some(v as u64);
        }
        "cleanup.policy" if value == "delete" => {}
        "min.insync.replicas" if value == "1" => {}
        "compression.type" if value == "producer" || value == "uncompressed" => {}
        "message.timestamp.type" if value == "CreateTime" => {}
        _ => {
            return Err(format!(
                "{name}={value:?} is not supported (kappa stores batches uncompressed, keeps \
                 every record until retention, and has one replica)"
            ))
        }
    }
    Ok(())
}

pub(crate) async fn create_topics(
    node: Rc<Node>,
    version: i16,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str().to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let fail = |mut result: CreatableTopicResult, error: i16, message: String| {
            result.error_code = error;
            result.error_message = Some(str(message));
            result
        };
        let mut config = node.config().topic_template.clone();
        config.partitions = match topic.num_partitions {
            -1 => node.config().default_partitions,
            n if n > 0 => n as u32,
            n => {
                results.push(fail(result, code::INVALID_PARTITIONS, format!("{n} partitions")));
                continue;
            }
        };
        if !matches!(topic.replication_factor, -1 | 1) {
            let message =
                format!("replication factor {}: kappa keeps one copy", topic.replication_factor);
            results.push(fail(result, code::INVALID_REPLICATION_FACTOR, message));
            continue;
        }
        if !topic.assignments.is_empty() {
            let message = "manual replica assignment is not supported".to_string();
            results.push(fail(result, code::INVALID_REPLICA_ASSIGNMENT, message));
            continue;
        }
        if let Err(message) = crate::meta::validate_topic_name(&name) {
            results.push(fail(result, code::INVALID_TOPIC_EXCEPTION, message.to_string()));
            continue;
        }
        let refused = topic
            .configs
            .iter()
            .find_map(|c| apply_config(&mut config, c.name.as_str(), c.value.as_deref()).err());
        if let Some(message) = refused {
            results.push(fail(result, code::INVALID_CONFIG, message));
            continue;
        }
        let partitions = config.partitions;
        let outcome = if request.validate_only {
            match node.topic(&name) {
                Some(_) => Err((code::TOPIC_ALREADY_EXISTS, format!("topic {name:?} exists"))),
                None => Ok(()),
            }
        } else {
            let shared = node.shared.clone();
            let topic_name = name.clone();
            let created = node
                .control(move |engine| {
                    let _serial = shared
                        .control_lock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    engine.create_topic(&topic_name, config)
                })
                .await;
            match created {
                Ok(Ok(())) => Ok(()),
                Ok(Err(Error::TopicExists { .. })) => {
                    Err((code::TOPIC_ALREADY_EXISTS, format!("topic {name:?} exists")))
                }
                Ok(Err(e)) => Err((code::INVALID_REQUEST, e.to_string())),
                Err(_) => Err((code::UNKNOWN_SERVER_ERROR, "the engine is shutting down".into())),
            }
        };
        result = match outcome {
            Ok(()) => {
                if version >= 5 {
                    result.num_partitions = partitions as i32;
                    result.replication_factor = 1;
                    result.configs = Some(Vec::<CreatableTopicConfigs>::new());
                }
                if version >= 7 {
                    result.topic_id = topic_id(&name);
                }
                result
            }
            Err((error, message)) => fail(result, error, message),
        };
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

pub(crate) async fn delete_topics(
    node: Rc<Node>,
    version: i16,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let names: Vec<Option<TopicName>> = if version >= 6 {
        request.topics.into_iter().map(|t| t.name).collect()
    } else {
        request.topic_names.into_iter().map(Some).collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let mut result = DeletableTopicResult::default();
        let Some(name) = name else {
            // Deletion by topic id (v6): kappa's ids are derived from names, look-ups by id are
            // not served.
            result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
            responses.push(result);
            continue;
        };
        let topic = name.0.as_str().to_string();
        result.name = Some(name);
        let (error, message) = if topic == OFFSETS_TOPIC {
            (code::POLICY_VIOLATION, Some(format!("{OFFSETS_TOPIC} holds committed offsets")))
        } else {
            let shared = node.shared.clone();
            let doomed = topic.clone();
            let deleted = node
                .control(move |engine| {
                    let _serial = shared
                        .control_lock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    engine.delete_topic(&doomed)
                })
                .await;
            match deleted {
                Ok(Ok(())) => {
                    forget_everywhere(&node, &topic).await;
                    (code::NONE, None)
                }
                Ok(Err(Error::UnknownTopic { .. })) => (code::UNKNOWN_TOPIC_OR_PARTITION, None),
                Ok(Err(e @ Error::TopicInUse { .. })) => {
                    (code::POLICY_VIOLATION, Some(e.to_string()))
                }
                Ok(Err(e)) => (code::UNKNOWN_SERVER_ERROR, Some(e.to_string())),
                Err(_) => (code::UNKNOWN_SERVER_ERROR, Some("the engine is shutting down".into())),
            }
        };
        result.error_code = error;
        if version >= 5 {
            result.error_message = message.map(str);
        }
        if version >= 6 && error == code::NONE {
            result.topic_id = topic_id(&topic);
        }
        responses.push(result);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// Drops every shard's cached readers and producer state of a deleted topic.
async fn forget_everywhere(node: &Rc<Node>, topic: &str) {
    for shard in 0..node.shared.peers.len() {
        let topic = topic.to_string();
        let _ = node.call(shard, move |n| async move { n.forget_topic(&topic) }).await;
    }
}

const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// (name, value, source, type) of one config entry.
type Entry = (&'static str, String, i8, i8);

fn topic_configs(node: &Node, meta: &TopicMeta) -> Vec<Entry> {
    let engine = &node.shared.inner.config;
    let c = &meta.config;
    let set = |v: bool| if v { SOURCE_TOPIC } else { SOURCE_DEFAULT };
    vec![
        ("cleanup.policy", "delete".into(), SOURCE_DEFAULT, TYPE_STRING),
        ("compression.type", "producer".into(), SOURCE_DEFAULT, TYPE_STRING),
        (
            "max.message.bytes",
            engine.log.limits.batch_size_bytes_max.to_string(),
            SOURCE_DEFAULT,
            TYPE_INT,
        ),
        ("message.timestamp.type", "CreateTime".into(), SOURCE_DEFAULT, TYPE_STRING),
        ("min.insync.replicas", "1".into(), SOURCE_DEFAULT, TYPE_INT),
        (
            "retention.bytes",
            c.retention_bytes_max.map_or(-1, |v| v as i64).to_string(),
            set(c.retention_bytes_max.is_some()),
            TYPE_LONG,
        ),
        (
            "retention.ms",
            c.retention_ms_max.unwrap_or(-1).to_string(),
            set(c.retention_ms_max.is_some()),
            TYPE_LONG,
        ),
        (
            "segment.bytes",
            c.segment_size_bytes_max.unwrap_or(engine.log.segment_size_bytes_max).to_string(),
            set(c.segment_size_bytes_max.is_some()),
            TYPE_INT,
        ),
    ]
}

fn broker_configs(node: &Node) -> Vec<Entry> {
    let k = node.config();
    let engine = &node.shared.inner.config;
    let ms = |d: std::time::Duration| d.as_millis().to_string();
    vec![
        (
            "auto.create.topics.enable",
            k.auto_create_topics.to_string(),
            SOURCE_STATIC_BROKER,
            TYPE_BOOLEAN,
        ),
        ("connections.max.idle.ms", ms(k.idle_timeout), SOURCE_STATIC_BROKER, TYPE_LONG),
        (
            "group.initial.rebalance.delay.ms",
            ms(k.group_initial_rebalance_delay),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
        (
            "group.max.session.timeout.ms",
            ms(k.group_session_timeout_max),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
        (
            "group.min.session.timeout.ms",
            ms(k.group_session_timeout_min),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
        (
            "message.max.bytes",
            engine.log.limits.batch_size_bytes_max.to_string(),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
        ("num.partitions", k.default_partitions.to_string(), SOURCE_STATIC_BROKER, TYPE_INT),
        (
            "offsets.topic.num.partitions",
            node.topic(super::OFFSETS_TOPIC).map_or(0, |m| m.config.partitions).to_string(),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            k.request_bytes_max.to_string(),
            SOURCE_STATIC_BROKER,
            TYPE_INT,
        ),
    ]
}

pub(crate) async fn describe_configs(
    node: Rc<Node>,
    version: i16,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let entries = match resource.resource_type {
            RESOURCE_TOPIC => match node.topic(resource.resource_name.as_str()) {
                Some(meta) => topic_configs(&node, &meta),
                None => {
                    result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    result.error_message =
                        Some(str(format!("unknown topic {:?}", resource.resource_name.as_str())));
                    results.push(result);
                    continue;
                }
            },
            RESOURCE_BROKER => broker_configs(&node),
            other => {
                result.error_code = code::INVALID_REQUEST;
                result.error_message = Some(str(format!("resource type {other} is not served")));
                results.push(result);
                continue;
            }
        };
        let wanted = resource.configuration_keys.as_ref();
        result.configs = entries
            .into_iter()
            .filter(|(name, ..)| wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == *name)))
            .map(|(name, value, source, kind)| {
                let mut entry = DescribeConfigsResourceResult::default()
                    .with_name(str(name))
                    .with_value(Some(str(value)))
                    .with_read_only(resource.resource_type == RESOURCE_BROKER);
                entry.config_source = source;
                if version >= 3 {
                    entry.config_type = kind;
                }
                entry
            })
            .collect();
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

pub(crate) async fn init_producer_id(
    node: Rc<Node>,
    _version: i16,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        // Transactions are not served; idempotence (no transactional id) is.
        return response.with_error_code(code::INVALID_REQUEST);
    }
    let (id, epoch) = (request.producer_id.0, request.producer_epoch);
    if id >= 0 && (0..i16::MAX - 1).contains(&epoch) {
        // An epoch bump of a producer that lost track of its sequences (KIP-360).
        return response.with_producer_id(ProducerId(id)).with_producer_epoch(epoch + 1);
    }
    let shared = node.shared.clone();
    let allocated = glommio::executor()
        .spawn_blocking(move || {
            shared.producer_ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).allocate()
        })
        .await;
    match allocated {
        Ok(id) => response.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "reserving producer ids failed");
            response
                .with_error_code(code::COORDINATOR_NOT_AVAILABLE)
                .with_producer_id(ProducerId(-1))
        }
    }
}
