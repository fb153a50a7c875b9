//! Records over HTTP: POST a batch (NDJSON or a JSON array) and GET a partition from an offset.
//!
//! A POSTed record is `{"key": "k", "value": ..., "timestamp": ms, "headers": {"h": "v"}}`:
//! `value` is a JSON string (stored as its UTF-8 bytes) or any other JSON value (stored as its
//! JSON text, so `{"value": {"temp": 3}}` stores `{"temp": 3}`, ready for views' field paths);
//! `key_b64` and `value_b64` carry binary bytes. The batch is parsed straight into one packed
//! `ProducerBatch` (keys and values borrowed from the body where they have no escapes), sent with
//! the async producer, and answered once every part reached the asked durability. The answer
//! names each partition's offset range; records of one partition keep their batch order, so
//! `per_record=true` can list every record's partition and offset.
//!
//! A GET reads on the shard that owns the partition (`Engine::run_on_partition`), copies at most
//! `max_records` / `max_bytes` out, and with `wait_ms` waits (woken by the log, not polled) for
//! records when there are none yet: a long poll for followers like `kappa consume`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use kappa_engine::operator::window::{EVENT_TIME_MAX, EVENT_TIME_MIN};
use kappa_engine::storage::Limits;
use kappa_engine::{ProducerBatch, Seek};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::read_body;
use crate::serve::app::App;
use crate::serve::error::{field_of, ApiError, ApiResult, Params};

/// The longest a GET may wait for new records.
const WAIT_MS_MAX: u64 = 30_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InRecord<'a> {
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key_b64: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default, borrow)]
    value_b64: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default, borrow)]
    headers: Option<BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>>,
}

/// A record's bytes, borrowed from the body where possible.
struct Parsed<'a> {
    key: Option<Cow<'a, [u8]>>,
    value: Cow<'a, [u8]>,
    timestamp: Option<i64>,
    headers: Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>,
}

fn b64(field: &str, text: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ApiError::bad(field, format!("{field} is not base64: {e}")))
}

fn check(record: InRecord<'_>) -> ApiResult<Parsed<'_>> {
    // Views fold only event times inside the engine's range (docs/semantics.md): a record
    // outside it would be acknowledged and then ignored by every view, so it is refused here.
    if let Some(t) = record.timestamp {
        if !(EVENT_TIME_MIN..=EVENT_TIME_MAX).contains(&t) {
            return Err(ApiError::bad(
                "timestamp",
                format!(
                    "timestamp {t} is outside the event-time range {EVENT_TIME_MIN}..={EVENT_TIME_MAX} \
                     (ms, ±2^62)"
                ),
            ));
        }
    }
    let key = match (record.key, record.key_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("key_b64", "give key or key_b64, not both"))
        }
        (Some(Cow::Borrowed(k)), None) => Some(Cow::Borrowed(k.as_bytes())),
        (Some(Cow::Owned(k)), None) => Some(Cow::Owned(k.into_bytes())),
        (None, Some(k)) => Some(Cow::Owned(b64("key_b64", &k)?)),
        (None, None) => None,
    };
    let value = match (record.value, record.value_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("value_b64", "give value or value_b64, not both"))
        }
        (Some(raw), None) => {
            let text = raw.get();
            if text.len() >= 2 && text.starts_with('"') && !text.contains('\\') {
                // A JSON string without escapes (the parser checked it): its bytes as they are.
                Cow::Borrowed(&text.as_bytes()[1..text.len() - 1])
            } else if text.starts_with('"') {
                // A JSON string with escapes: its unescaped bytes.
                match serde_json::from_str::<&str>(text) {
                    Ok(s) => Cow::Borrowed(s.as_bytes()),
                    Err(_) => Cow::Owned(
                        serde_json::from_str::<String>(text)
                            .map_err(|e| ApiError::bad("value", e.to_string()))?
                            .into_bytes(),
                    ),
                }
            } else {
                Cow::Borrowed(text.as_bytes())
            }
        }
        (None, Some(v)) => Cow::Owned(b64("value_b64", &v)?),
        (None, None) => {
            return Err(ApiError::bad("value", "every record needs a value (or value_b64)"))
        }
    };
    Ok(Parsed {
        key,
        value,
        timestamp: record.timestamp,
        headers: record.headers.map(|h| h.into_iter().collect()).unwrap_or_default(),
    })
}

/// Names the field of a JSON error by re-parsing with path tracking (only on the error path).
fn explain<'a, T: Deserialize<'a>>(text: &'a [u8], error: serde_json::Error) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(text);
    let (field, index) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => field_of(e.path()),
        Ok(_) => (String::new(), None),
    };
    let message = error.to_string();
    let field = match message.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        Some(missing) => missing.to_string(),
        None if field.is_empty() => "records".to_string(),
        None => field,
    };
    let mut e = ApiError::bad(&field, message);
    if let Some(i) = index {
        e = e.at("index", i);
    }
    e
}

/// Parses a body into a packed batch; returns the batch and each record's key (for offsets).
fn parse_batch(
    body: &[u8],
    ndjson: bool,
    max_records: usize,
    fit: &mut Fit,
) -> ApiResult<(ProducerBatch, Vec<Option<Vec<u8>>>)> {
    let mut batch = ProducerBatch::with_capacity(1024, body.len());
    let mut keys = Vec::new();
    let mut push = |record: Parsed<'_>, count: usize| -> ApiResult<()> {
        if count >= max_records {
            return Err(ApiError::too_large(
                "records",
                format!("a batch holds at most {max_records} records (http.max_batch_records)"),
            ));
        }
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref().map(|v| v.as_bytes())))
            .collect();
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.len()
            + headers.iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum::<usize>();
        fit.add(record.key.as_deref(), size as u64)?;
        batch.push_with_headers(record.key.as_deref(), &record.value, record.timestamp, &headers);
        keys.push(record.key.map(Cow::into_owned));
        Ok(())
    };
    if ndjson {
        let mut count = 0;
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = |e: ApiError| e.at("line", n as u64 + 1);
            let record: InRecord<'_> =
                serde_json::from_slice(line).map_err(|e| at(explain::<InRecord<'_>>(line, e)))?;
            push(check(record).map_err(at)?, count).map_err(at)?;
            count += 1;
        }
    } else {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let records: Vec<InRecord<'_>> = if first == Some(&b'{') {
            let one = serde_json::from_slice(body).map_err(|e| explain::<InRecord<'_>>(body, e))?;
            vec![one]
        } else {
            serde_json::from_slice(body).map_err(|e| explain::<Vec<InRecord<'_>>>(body, e))?
        };
        for (i, record) in records.into_iter().enumerate() {
            let at = |e: ApiError| e.at("index", i as u64);
            push(check(record).map_err(at)?, i).map_err(at)?;
        }
    }
    if keys.is_empty() {
        return Err(ApiError::bad("records", "the body holds no records"));
    }
    fit.check_parts()?;
    Ok((batch, keys))
}

/// The storage limits every part of a batch must meet, checked before anything is sent: the
/// producer splits a batch into one append per partition, and each shard checks only its own
/// part, so without this a refused batch could be partly written (all or nothing instead).
struct Fit {
    limits: Limits,
    partitions: u32,
    /// Bytes of keyed records per partition, and of unkeyed ones (they all go to one partition,
    /// chosen round-robin at send time, so they count against every partition).
    keyed: BTreeMap<u32, u64>,
    unkeyed: u64,
}

impl Fit {
    fn new(limits: Limits, partitions: u32) -> Fit {
        Fit { limits, partitions: partitions.max(1), keyed: BTreeMap::new(), unkeyed: 0 }
    }

    fn add(&mut self, key: Option<&[u8]>, size: u64) -> ApiResult<()> {
        let max = u64::from(self.limits.record_size_bytes_max);
        if size > max {
            return Err(ApiError::too_large(
                "value",
                format!(
                    "the record holds {size} bytes (key, value and headers); a record holds at \
                     most {max}"
                ),
            ));
        }
        match key {
            Some(k) => {
                let p = kappa_engine::router::partition_for_key(k, self.partitions);
                *self.keyed.entry(p).or_default() += size;
            }
            None => self.unkeyed += size,
        }
        Ok(())
    }

    fn check_parts(&self) -> ApiResult<()> {
        let max = u64::from(self.limits.batch_size_bytes_max);
        let largest = self.keyed.values().copied().max().unwrap_or(0) + self.unkeyed;
        if largest > max {
            return Err(ApiError::too_large(
                "records",
                format!(
                    "the records for one partition hold {largest} bytes; one request may carry \
                     at most {max} bytes per partition (split the batch)"
                ),
            ));
        }
        Ok(())
    }
}

pub async fn post(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref(), &["durability", "per_record"])?;
    let durability = params.durability("durability")?.unwrap_or(app.settings.default_durability);
    let per_record = params.bool("per_record")?.unwrap_or(false);
    let http = &app.settings.config.http;
    let body = read_body(&app, &headers, body, http.max_body_bytes).await?;
    let content_type =
        headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ndjson = if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/ndjson")
        || content_type.starts_with("application/jsonl")
    {
        true
    } else if content_type.starts_with("application/json") {
        false
    } else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("content-type"),
            format!("content-type {content_type:?}: send application/x-ndjson or application/json"),
        ));
    };
    let max_records = http.max_batch_records;
    let partitions = app.engine.topics().get(&topic).map(|t| t.partitions).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            Some("topic"),
            format!("no topic {topic:?}"),
        )
    })?;
    let mut fit = Fit::new(app.engine.config().log.limits, partitions);
    // Parsing a large body is CPU work: keep it off the HTTP threads.
    let (batch, keys) = if body.len() > 256 * 1024 {
        let bytes = body.bytes.clone();
        tokio::task::spawn_blocking(move || parse_batch(&bytes, ndjson, max_records, &mut fit))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??
    } else {
        parse_batch(&body, ndjson, max_records, &mut fit)?
    };
    let count = keys.len();
    let acks = app.producer(durability).send_packed_async(&topic, batch).await?;
    app.http.records_in.inc_by(count as u64);
    let mut answer = json!({
        "topic": topic,
        "count": count,
        "durability": durability.to_string(),
        "partitions": acks.iter().map(|a| json!({
            "partition": a.partition,
            "base_offset": a.base_offset,
            "last_offset": a.last_offset,
            "count": a.last_offset - a.base_offset + 1,
        })).collect::<Vec<_>>(),
    });
    if per_record {
        answer["records"] = per_record_offsets(&app, &topic, &keys, &acks)?;
    }
    Ok(Json(answer))
}

/// Each record's partition and offset: records of one partition keep their batch order; unkeyed
/// ones all went to the one partition whose acknowledged count exceeds its keyed records.
fn per_record_offsets(
    app: &App,
    topic: &str,
    keys: &[Option<Vec<u8>>],
    acks: &[kappa_engine::BatchAck],
) -> ApiResult<Value> {
    let partitions = app
        .engine
        .topics()
        .get(topic)
        .map(|t| t.partitions)
        .ok_or_else(|| ApiError::internal("the topic vanished"))?;
    let keyed: Vec<Option<u32>> = keys
        .iter()
        .map(|k| k.as_deref().map(|k| kappa_engine::router::partition_for_key(k, partitions)))
        .collect();
    let unkeyed_partition = acks
        .iter()
        .find(|a| {
            let keyed_here = keyed.iter().filter(|p| **p == Some(a.partition)).count() as u64;
            a.last_offset - a.base_offset + 1 > keyed_here
        })
        .map(|a| a.partition);
    let mut next: BTreeMap<u32, u64> = acks.iter().map(|a| (a.partition, a.base_offset)).collect();
    let mut out = Vec::with_capacity(keys.len());
    for p in keyed {
        let partition = p.or(unkeyed_partition).unwrap_or(0);
        let offset = next.get_mut(&partition).map(|o| {
            *o += 1;
            *o - 1
        });
        out.push(json!({ "partition": partition, "offset": offset }));
    }
    Ok(Value::Array(out))
}

/// One record as a GET returns it.
fn record_json(record: &kappa_engine::RecordRef<'_>) -> Value {
    let mut out = json!({ "offset": record.offset(), "timestamp": record.timestamp() });
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    match record.key() {
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => out["key"] = s.into(),
            Err(_) => out["key_b64"] = b64(k).into(),
        },
        None => out["key"] = Value::Null,
    }
    match std::str::from_utf8(record.value()) {
        Ok(s) => out["value"] = s.into(),
        Err(_) => out["value_b64"] = b64(record.value()).into(),
    }
    let headers: serde_json::Map<String, Value> = record
        .headers()
        .map(|h| {
            let value = h.value.map(|v| Value::from(String::from_utf8_lossy(v).into_owned()));
            (String::from_utf8_lossy(h.key).into_owned(), value.unwrap_or(Value::Null))
        })
        .collect();
    if !headers.is_empty() {
        out["headers"] = Value::Object(headers);
    }
    out
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path((topic, partition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let partition: u32 = partition.parse().map_err(|_| {
        ApiError::bad("partition", format!("partition {partition:?} is not a number"))
    })?;
    let params = Params::parse(
        query.as_deref(),
        &["offset", "timestamp", "from", "max_records", "max_bytes", "wait_ms"],
    )?;
    let http = &app.settings.config.http;
    let max_records = params.bounded("max_records", 1000, http.max_read_records as u64)? as usize;
    let max_bytes = params.bounded("max_bytes", 1 << 20, http.max_body_bytes as u64)? as usize;
    let wait_ms = params.u64("wait_ms")?.unwrap_or(0);
    let wait_max = WAIT_MS_MAX.min(http.request_timeout_ms / 2);
    if wait_ms > wait_max {
        return Err(ApiError::bad("wait_ms", format!("wait_ms must be at most {wait_max}")));
    }
    let seek = match (params.u64("offset")?, params.i64("timestamp")?, params.str("from")) {
        (Some(o), None, None) => Seek::Offset(o),
        (None, Some(t), None) => Seek::Timestamp(t),
        (None, None, Some("beginning")) => Seek::Beginning,
        (None, None, Some("end")) => Seek::End,
        (None, None, Some(other)) => {
            return Err(ApiError::bad("from", format!("from={other:?}: use beginning or end")))
        }
        (None, None, None) => Seek::Beginning,
        _ => return Err(ApiError::bad("offset", "give one of offset, timestamp or from")),
    };
    // Waiting holds a blocking thread, so at most `long_polls` reads wait on a shard at once.
    // Past that, a read waits here (asleep, holding no thread) for a permit, up to its own
    // `wait_ms`; if none comes it answers what is there: either way it takes about `wait_ms`,
    // so a client that polls again at once never spins.
    let (permit, wait) = if wait_ms > 0 {
        let wait = Duration::from_millis(wait_ms);
        let waiting = tokio::time::Instant::now();
        match tokio::time::timeout(wait, app.long_polls.clone().acquire_owned()).await {
            Ok(Ok(permit)) => (Some(permit), wait.saturating_sub(waiting.elapsed())),
            _ => (None, Duration::ZERO),
        }
    } else {
        (None, Duration::ZERO)
    };
    let read = app.blocking(move |app| {
        let _permit = permit;
        let read = app.engine.run_on_partition(&topic, partition, move |log| async move {
            read_records(&log, seek, max_records, max_bytes, wait).await
        })?;
        Ok((read?, topic))
    });
    // A long poll ends early when shutdown begins (the shard's wait ends when the log closes).
    let mut stop = app.stop.clone();
    let ((records, next_offset, start_offset, end_offset), _topic) = tokio::select! {
        result = read => result?,
        _ = stop.wait_for(|s| *s) => return Err(ApiError::unavailable("shutting down")),
    };
    Ok(Json(json!({
        "partition": partition,
        "records": records,
        "next_offset": next_offset,
        "start_offset": start_offset,
        "end_offset": end_offset,
    })))
}

/// Runs on the shard: reads up to the limits, waiting once (up to `wait`) when nothing is there.
async fn read_records(
    log: &kappa_engine::ReadOnlyLog,
    seek: Seek,
    max_records: usize,
    max_bytes: usize,
    wait: Duration,
) -> Result<(Vec<Value>, u64, u64, u64), kappa_engine::Error> {
    let mut reader = log.reader(seek)?;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut waited = wait.is_zero();
    'read: loop {
        match reader.next_batch().await? {
            Some(read) => {
                for record in read.records() {
                    bytes += record.key().map_or(0, <[u8]>::len) + record.value().len();
                    records.push(record_json(&record));
                    if records.len() >= max_records || bytes >= max_bytes {
                        break 'read;
                    }
                }
            }
            None if !records.is_empty() || waited => break,
            None => {
                waited = true;
                let next = reader.next_offset();
                let _ = glommio::timer::timeout(wait, async {
                    log.wait_readable(next).await.map_err(|e| {
                        glommio::GlommioError::IoError(std::io::Error::other(e.to_string()))
                    })
                })
                .await;
            }
        }
    }
    let next_offset =
        records.last().and_then(|r| r["offset"].as_u64()).map_or(reader.next_offset(), |o| o + 1);
    Ok((records, next_offset, log.start_offset(), log.readable_end_offset()))
}
