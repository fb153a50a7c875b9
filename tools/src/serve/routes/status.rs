//! The status page at `/` and the JSON it refreshes itself from (`/v1/status`).
//!
//! The page is one static HTML file with a small script: it fetches `/v1/status` every second
//! and draws topics (offsets, sizes, rates from successive offsets), views (versions, replay
//! progress bars, lag, ETA) and the live append->ack latency percentiles against the budget. The
//! HTML itself holds no data, so it is served without the token; the script asks for the token
//! when the API answers 401 and keeps it in the tab's session storage.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::Json;
use serde_json::{json, Value};

use super::topics::partitions;
use super::views::progress_json;
use crate::serve::app::App;
use crate::serve::error::ApiResult;

const PAGE: &str = include_str!("status.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

fn percentiles_us(h: &hdrhistogram::Histogram<u64>) -> Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    json!({
        "samples": h.len(),
        "p50_us": us(0.5),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "max_us": h.max() as f64 / 1e3,
    })
}

pub async fn json(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    app.blocking(|app| {
        let shards = app.engine.metrics()?;
        let mut acks = hdrhistogram::Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 2)
            .map_err(|e| crate::serve::error::ApiError::internal(e.to_string()))?;
        let mut fsyncs = acks.clone();
        for s in &shards {
            let _ = acks.add(&s.append_ack_latency_ns);
            let _ = fsyncs.add(&s.fsync_latency_ns);
        }
        let parts = partitions(app)?;
        let topics: Vec<Value> = app
            .engine
            .topics()
            .iter()
            .map(|(name, config)| {
                let p = parts.get(name).cloned().unwrap_or_default();
                json!({
                    "name": name,
                    "partitions": config.partitions,
                    "end_offsets": p.iter().map(|q| q.end_offset).collect::<Vec<_>>(),
                    "records": p.iter().map(|q| q.end_offset - q.start_offset).sum::<u64>(),
                    "size_bytes": p.iter().map(|q| q.size_bytes).sum::<u64>(),
                })
            })
            .collect();
        let mut views = Vec::new();
        for name in app.engine.views().keys() {
            let Ok(handle) = app.engine.view(name) else { continue };
            let versions: Vec<Value> = handle
                .versions()
                .into_iter()
                .filter_map(|v| handle.progress_of(v).ok().map(|p| progress_json(&p)))
                .collect();
            views.push(json!({
                "name": name,
                "topic": handle.topic(),
                "served_version": handle.version(),
                "versions": versions,
            }));
        }
        Ok(Json(json!({
            "uptime_s": app.started.elapsed().as_secs_f64(),
            "ready": app.is_ready(),
            "data_dir": app.data_dir.display().to_string(),
            "shards": app.engine.shard_count(),
            "http_addr": app.settings.http_addr.to_string(),
            "kafka_addr": app.settings.kafka_addr.to_string(),
            "live_latency_budget_us": app.settings.config.engine.live_latency_budget_ms * 1000,
            "append_ack_latency": percentiles_us(&acks),
            "fsync_latency": percentiles_us(&fsyncs),
            "records_appended": shards.iter().map(|s| s.records_appended).sum::<u64>(),
            "queues": shards.iter().map(|s| json!({
                "shard": s.shard,
                "requests": s.request_queue_len,
                "write_buffers": s.write_queue_len,
                "appends_in_flight": s.appends_in_flight,
            })).collect::<Vec<_>>(),
            "topics": topics,
            "views": views,
            "failed_views": app
                .failed_views
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect::<Vec<_>>(),
        })))
    })
    .await
}
