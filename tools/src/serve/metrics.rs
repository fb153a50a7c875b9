//! `/metrics`: the engine's state in Prometheus (OpenMetrics) text, with `prometheus-client`.
//!
//! Engine figures are snapshots taken at scrape time (one metrics request per shard, progress of
//! every view version) and encoded by a collector, so nothing on the shards keeps a second set of
//! counters: per partition start/end/readable offsets, size, unwritten records and consumer lag;
//! per view version lag, replay rate, ETA and consumed records; per shard appends, append->ack
//! latency and fdatasync latency (HDR histograms exposed as Prometheus histograms) and queue
//! depths. The HTTP layer's own request counters and latency histograms live in a registry here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::app::App;
use super::error::ApiResult;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// The HTTP layer's own metrics.
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub records_in: Counter,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let mut registry = Registry::with_prefix("kappa_http");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~13 s.
            Histogram::new(exponential_buckets(50e-6, 2.0, 19))
        });
        let records_in = Counter::default();
        registry.register(
            "requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request latency by route (until the response head)",
            latency.clone(),
        );
        registry.register(
            "records_ingested",
            "records appended through the HTTP API",
            records_in.clone(),
        );
        HttpMetrics { registry, requests, latency, records_in }
    }

    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route: route.into(), method: method.into(), status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route: route.into() })
            .observe(elapsed.as_secs_f64());
    }
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

/// Upper bounds (seconds) of the buckets HDR histograms are exposed with.
const LATENCY_BOUNDS_S: [f64; 18] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    500e-3, 1.0, 2.5, 5.0, 10.0,
];

/// An HDR histogram of nanoseconds as Prometheus buckets: (sum in s, count, cumulative buckets).
fn buckets(h: &hdrhistogram::Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let count = h.len();
    let sum = h.mean() * count as f64 / 1e9;
    let mut out: Vec<(f64, u64)> = LATENCY_BOUNDS_S
        .iter()
        .map(|bound| {
            let below = (*bound * 1e9) as u64;
            let n = if count == 0 { 0 } else { h.count_between(0, below) };
            (*bound, n)
        })
        .collect();
    out.push((f64::INFINITY, count));
    (sum, count, out)
}

/// A snapshot of the engine, encoded on scrape.
#[derive(Debug)]
struct Snapshot {
    budget_s: f64,
    ready: bool,
    connections: i64,
    shards: Vec<kappa_engine::ShardMetrics>,
    views: Vec<(String, u32, kappa_engine::VersionProgress)>,
    /// Views that could not be opened at start, with their reasons.
    failed_views: Vec<(String, &'static str)>,
}

type Labels = Vec<(&'static str, String)>;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        if labels.is_empty() {
            metric.encode_gauge(value)?;
        } else {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        metric.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, &hdrhistogram::Histogram<u64>)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in values {
        let (sum, count, buckets) = buckets(h);
        metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "up",
            "1 when the appliance is ready",
            &[(vec![], f64::from(u8::from(self.ready)))],
        )?;
        gauge(
            &mut e,
            "live_latency_budget_seconds",
            "the live tail's latency budget",
            &[(vec![], self.budget_s)],
        )?;
        gauge(
            &mut e,
            "http_connections_open",
            "open HTTP connections",
            &[(vec![], self.connections as f64)],
        )?;
        let partitions: Vec<(Labels, &kappa_engine::PartitionMetrics)> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.partitions.iter().map(move |p| {
                    let labels = vec![
                        ("topic", p.topic.clone()),
                        ("partition", p.partition.to_string()),
                        ("shard", s.shard.to_string()),
                    ];
                    (labels, p)
                })
            })
            .collect();
        let per_partition =
            |f: &dyn Fn(&kappa_engine::PartitionMetrics) -> f64| -> Vec<(Labels, f64)> {
                partitions.iter().map(|(l, p)| (l.clone(), f(p))).collect()
            };
        gauge(
            &mut e,
            "partition_end_offset",
            "offset the next record of the partition gets",
            &per_partition(&|p| p.end_offset as f64),
        )?;
        gauge(
            &mut e,
            "partition_start_offset",
            "first offset still in the partition",
            &per_partition(&|p| p.start_offset as f64),
        )?;
        gauge(
            &mut e,
            "partition_readable_end_offset",
            "records below this are written and readable",
            &per_partition(&|p| p.readable_end_offset as f64),
        )?;
        gauge(
            &mut e,
            "partition_size_bytes",
            "bytes of the partition's segments",
            &per_partition(&|p| p.size_bytes as f64),
        )?;
        gauge(
            &mut e,
            "partition_segments",
            "segment files of the partition",
            &per_partition(&|p| p.segment_count as f64),
        )?;
        gauge(
            &mut e,
            "partition_unwritten_records",
            "appended records not yet written (end - readable end)",
            &per_partition(&|p| (p.end_offset - p.readable_end_offset) as f64),
        )?;
        let consumers: Vec<(Labels, f64)> = self
            .shards
            .iter()
            .flat_map(|s| s.consumers.iter())
            .map(|c| {
                (
                    vec![("topic", c.topic.clone()), ("partition", c.partition.to_string())],
                    c.lag as f64,
                )
            })
            .collect();
        gauge(
            &mut e,
            "partition_consumer_lag_records",
            "records between a tail consumer and the partition end",
            &consumers,
        )?;

        let view_labels = |name: &str, version: u32, p: &kappa_engine::VersionProgress| -> Labels {
            vec![
                ("view", name.to_string()),
                ("version", version.to_string()),
                ("served", p.served.to_string()),
            ]
        };
        let per_view = |f: &dyn Fn(&kappa_engine::VersionProgress) -> f64| -> Vec<(Labels, f64)> {
            self.views.iter().map(|(n, v, p)| (view_labels(n, *v, p), f(p))).collect()
        };
        gauge(
            &mut e,
            "view_lag_records",
            "records of the topic the view version has not folded in",
            &per_view(&|p| p.lag() as f64),
        )?;
        gauge(
            &mut e,
            "view_replay_rate_records_per_second",
            "records per second folded by the view version",
            &per_view(&|p| p.rate_records_s()),
        )?;
        gauge(
            &mut e,
            "view_eta_seconds",
            "seconds until the view version catches up at its rate",
            &per_view(&|p| p.eta_s()),
        )?;
        gauge(
            &mut e,
            "view_caught_up",
            "1 when every partition of the version follows the live tail",
            &per_view(&|p| f64::from(u8::from(p.caught_up()))),
        )?;
        let failed: Vec<(Labels, f64)> = self
            .failed_views
            .iter()
            .map(|(view, reason)| {
                (vec![("view", view.clone()), ("reason", reason.to_string())], 1.0)
            })
            .collect();
        gauge(
            &mut e,
            "view_failed",
            "1 for a view that could not be opened at start (the others are served), by reason",
            &failed,
        )?;
        let consumed: Vec<(Labels, u64)> =
            self.views.iter().map(|(n, v, p)| (view_labels(n, *v, p), p.consumed())).collect();
        counter(
            &mut e,
            "view_consumed_records",
            "records folded into the view version",
            &consumed,
        )?;
        let view_partitions: Vec<(Labels, f64)> = self
            .views
            .iter()
            .flat_map(|(n, v, p)| {
                p.partitions.iter().map(move |q| {
                    (
                        vec![
                            ("view", n.clone()),
                            ("version", v.to_string()),
                            ("partition", q.partition.to_string()),
                        ],
                        q.lag as f64,
                    )
                })
            })
            .collect();
        gauge(
            &mut e,
            "view_partition_lag_records",
            "records of one partition the view version has not folded in",
            &view_partitions,
        )?;

        let shard = |s: &kappa_engine::ShardMetrics| vec![("shard", s.shard.to_string())];
        let per_shard_u64 = |f: &dyn Fn(&kappa_engine::ShardMetrics) -> u64| -> Vec<(Labels, u64)> {
            self.shards.iter().map(|s| (shard(s), f(s))).collect()
        };
        let per_shard_f64 = |f: &dyn Fn(&kappa_engine::ShardMetrics) -> f64| -> Vec<(Labels, f64)> {
            self.shards.iter().map(|s| (shard(s), f(s))).collect()
        };
        counter(
            &mut e,
            "shard_records_appended",
            "records appended on the shard",
            &per_shard_u64(&|s| s.records_appended),
        )?;
        counter(
            &mut e,
            "shard_bytes_appended",
            "key, value and header bytes appended on the shard",
            &per_shard_u64(&|s| s.bytes_appended),
        )?;
        counter(
            &mut e,
            "shard_batches_appended",
            "batches appended on the shard",
            &per_shard_u64(&|s| s.batches_appended),
        )?;
        counter(
            &mut e,
            "shard_fsyncs",
            "fdatasyncs of the shard's partitions",
            &per_shard_u64(&|s| s.fsync_count),
        )?;
        gauge(
            &mut e,
            "shard_request_queue_depth",
            "requests waiting in the shard's channel",
            &per_shard_f64(&|s| s.request_queue_len as f64),
        )?;
        gauge(
            &mut e,
            "shard_write_queue_depth",
            "full write buffers waiting for the writers",
            &per_shard_f64(&|s| s.write_queue_len as f64),
        )?;
        gauge(
            &mut e,
            "shard_appends_in_flight",
            "appends waiting for their durability",
            &per_shard_f64(&|s| s.appends_in_flight as f64),
        )?;
        let acks: Vec<(Labels, &hdrhistogram::Histogram<u64>)> =
            self.shards.iter().map(|s| (shard(s), &s.append_ack_latency_ns)).collect();
        histogram(
            &mut e,
            "shard_append_ack_latency_seconds",
            "from the shard taking an append to its acknowledgement (live latency)",
            &acks,
        )?;
        let tails: Vec<(Labels, &hdrhistogram::Histogram<u64>)> =
            self.shards.iter().map(|s| (shard(s), &s.tail_delivery_latency_ns)).collect();
        histogram(
            &mut e,
            "shard_tail_delivery_latency_seconds",
            "from the shard taking an append to a consumer at the tail being handed its records",
            &tails,
        )?;
        let fsyncs: Vec<(Labels, &hdrhistogram::Histogram<u64>)> =
            self.shards.iter().map(|s| (shard(s), &s.fsync_latency_ns)).collect();
        histogram(&mut e, "shard_fsync_latency_seconds", "fdatasync latency", &fsyncs)?;
        Ok(())
    }
}

/// Takes the engine snapshot (blocking calls to every shard).
fn snapshot(app: &App) -> ApiResult<Snapshot> {
    let shards = app.engine.metrics()?;
    let mut views = Vec::new();
    for name in app.engine.views().keys() {
        let Ok(handle) = app.engine.view(name) else { continue };
        for version in handle.versions() {
            if let Ok(progress) = handle.progress_of(version) {
                views.push((name.clone(), version, progress));
            }
        }
    }
    Ok(Snapshot {
        budget_s: app.settings.config.engine.live_latency_budget_ms as f64 / 1e3,
        ready: app.is_ready(),
        connections: app.open_connections.load(std::sync::atomic::Ordering::Relaxed),
        shards,
        views,
        failed_views: app
            .failed_views
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|f| (f.view.clone(), f.reason))
            .collect(),
    })
}

pub async fn scrape(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let snapshot = app.blocking(snapshot).await?;
    let mut registry = Registry::with_prefix("kappa");
    registry.register_collector(Box::new(snapshot));
    let mut body = String::new();
    let encoded = text::encode_registry(&mut body, &registry)
        .and_then(|()| text::encode_registry(&mut body, &app.http.registry))
        .and_then(|()| text::encode_eof(&mut body));
    encoded.map_err(|e| super::error::ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hdr_histograms_become_cumulative_buckets() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 2)
            .expect("bounds");
        for ns in [20_000u64, 40_000, 900_000, 3_000_000_000] {
            h.record(ns).expect("in range");
        }
        let (sum, count, buckets) = super::buckets(&h);
        assert_eq!(count, 4);
        assert!((sum - 3.00096).abs() < 0.05, "{sum}");
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).map(|(_, n)| *n);
        assert_eq!(at(25e-6), Some(1));
        assert_eq!(at(50e-6), Some(2));
        assert_eq!(at(1e-3), Some(3));
        assert_eq!(at(2.5), Some(3));
        assert_eq!(at(5.0), Some(4));
        assert_eq!(at(f64::INFINITY), Some(4));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
    }
}
