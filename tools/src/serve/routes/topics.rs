//! `/v1/topics`: list, describe (partitions, offsets, sizes), create and delete topics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::read_body;
use crate::serve::app::App;
use crate::serve::error::{json_body, ApiError, ApiResult};

/// Partitions per topic, at most (each is a directory and a writer on a shard).
pub const PARTITIONS_MAX: u32 = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    partitions: u32,
    #[serde(default)]
    retention_ms: Option<i64>,
    #[serde(default)]
    retention_bytes: Option<u64>,
    #[serde(default)]
    segment_bytes: Option<u64>,
}

/// One partition as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub partition: u32,
    pub shard: u16,
    pub start_offset: u64,
    pub end_offset: u64,
    pub readable_end_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
}

/// Every partition of every topic, from one metrics call per shard.
pub fn partitions(app: &App) -> ApiResult<BTreeMap<String, Vec<PartitionInfo>>> {
    let mut out: BTreeMap<String, Vec<PartitionInfo>> = BTreeMap::new();
    for shard in app.engine.metrics()? {
        for p in shard.partitions {
            out.entry(p.topic.clone()).or_default().push(PartitionInfo {
                partition: p.partition,
                shard: shard.shard,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                readable_end_offset: p.readable_end_offset,
                size_bytes: p.size_bytes,
                segments: p.segment_count,
            });
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|p| p.partition);
    }
    Ok(out)
}

fn topic_json(name: &str, config: &kappa_engine::TopicConfig, parts: &[PartitionInfo]) -> Value {
    json!({
        "name": name,
        "partitions": config.partitions,
        "records": parts.iter().map(|p| p.end_offset - p.start_offset).sum::<u64>(),
        "end_offset_sum": parts.iter().map(|p| p.end_offset).sum::<u64>(),
        "size_bytes": parts.iter().map(|p| p.size_bytes).sum::<u64>(),
        "retention_ms": config.retention_ms_max,
        "retention_bytes": config.retention_bytes_max,
        "segment_bytes": config.segment_size_bytes_max,
    })
}

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    app.blocking(|app| {
        let parts = partitions(app)?;
        let topics: Vec<Value> = app
            .engine
            .topics()
            .iter()
            .map(|(name, config)| {
                topic_json(name, config, parts.get(name).map(Vec::as_slice).unwrap_or(&[]))
            })
            .collect();
        Ok(Json(json!({ "topics": topics })))
    })
    .await
}

pub async fn describe(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
) -> ApiResult<Json<Value>> {
    app.blocking(move |app| {
        let config = app.engine.topics().remove(&topic).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, Some("topic"), format!("unknown topic {topic:?}"))
        })?;
        let parts = partitions(app)?.remove(&topic).unwrap_or_default();
        let views: Vec<String> =
            app.engine.views().into_iter().filter(|(_, t)| *t == topic).map(|(v, _)| v).collect();
        let mut body = topic_json(&topic, &config, &parts);
        body["partition_detail"] =
            serde_json::to_value(&parts).map_err(|e| ApiError::internal(e.to_string()))?;
        body["views"] = json!(views);
        Ok(Json(body))
    })
    .await
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = read_body(&app, &headers, body, 64 * 1024).await?;
    let request: CreateTopic = json_body(&body)?;
    if request.partitions == 0 || request.partitions > PARTITIONS_MAX {
        return Err(ApiError::bad(
            "partitions",
            format!("partitions must be between 1 and {PARTITIONS_MAX}"),
        ));
    }
    if request.retention_ms.is_some_and(|ms| ms <= 0) {
        return Err(ApiError::bad("retention_ms", "retention_ms must be positive"));
    }
    if request.segment_bytes.is_some_and(|b| b < 1 << 20) {
        return Err(ApiError::bad("segment_bytes", "segment_bytes must be at least 1 MiB"));
    }
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        let config = app.topic_config(
            request.partitions,
            request.retention_ms,
            request.retention_bytes,
            request.segment_bytes,
        );
        app.engine.create_topic(&request.name, config.clone())?;
        tracing::info!(topic = %request.name, partitions = request.partitions, "topic created over HTTP");
        Ok((StatusCode::CREATED, Json(topic_json(&request.name, &config, &[]))))
    })
    .await
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
) -> ApiResult<Json<Value>> {
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        app.engine.delete_topic(&topic)?;
        Ok(Json(json!({ "deleted": topic })))
    })
    .await
}
