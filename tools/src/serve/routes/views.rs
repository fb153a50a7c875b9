//! `/v1/views`: list, describe, create, delete; get, range and windows queries; rebuild with
//! progress (polled, or streamed as server-sent events); serve another version; drop a version.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use base64::Engine as _;
use futures_util::Stream;
use kappa_engine::operator::window::ALL_TIME;
use kappa_engine::{Row, VersionProgress, ViewHandle};
use serde::Deserialize;
use serde_json::{json, Value};

use super::read_body;
use crate::serve::app::App;
use crate::serve::error::{json_body, ApiError, ApiResult, Params};
use crate::serve::spec::ViewSpec;

/// How often a progress stream reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateView {
    name: String,
    definition: ViewSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeVersion {
    version: u32,
}

fn number(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

pub fn row_json(row: &Row) -> Value {
    let mut out = json!({
        "window_start": if row.window_start == ALL_TIME { Value::Null } else { json!(row.window_start) },
        "window_end": if row.window_end == i64::MAX { Value::Null } else { json!(row.window_end) },
        "value": number(row.value),
    });
    match std::str::from_utf8(&row.key) {
        Ok(k) => out["key"] = k.into(),
        Err(_) => {
            out["key_b64"] = base64::engine::general_purpose::STANDARD.encode(&row.key).into()
        }
    }
    out
}

pub fn progress_json(p: &VersionProgress) -> Value {
    let consumed = p.consumed();
    let lag = p.lag();
    let total = consumed + lag;
    json!({
        "version": p.version,
        "revision": p.revision,
        "served": p.served,
        "caught_up": p.caught_up(),
        "consumed": consumed,
        "lag": lag,
        "fraction": if total == 0 { 1.0 } else { consumed as f64 / total as f64 },
        "rate_records_s": number(p.rate_records_s()),
        "eta_s": number(p.eta_s()),
        "partitions": p.partitions.iter().map(|q| json!({
            "partition": q.partition,
            "next_offset": q.next_offset,
            "end_offset": q.end_offset,
            "lag": q.lag,
            "watermark": q.watermark,
            "live": q.live,
            "caught_up_at": q.caught_up_at,
            "rate_records_s": number(q.rate_records_s),
            "eta_s": number(q.eta_s),
            "consumed": q.counters.consumed,
            "applied": q.counters.applied,
            "skipped": q.counters.skipped(),
            "late_dropped": q.counters.late_dropped,
            "late_updated": q.counters.late_updated,
            "error": q.error,
        })).collect::<Vec<_>>(),
    })
}

fn handle(app: &App, view: &str) -> ApiResult<ViewHandle> {
    app.engine.view(view).map_err(|_| {
        let failed = app.failed_views.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match failed.get(view) {
            // Configured or stored, but it could not be opened at start: say why.
            Some(f) => ApiError::new(
                StatusCode::CONFLICT,
                Some("view"),
                format!("view {view:?} failed to start ({}): {}", f.reason, f.error),
            ),
            None => {
                ApiError::new(StatusCode::NOT_FOUND, Some("view"), format!("unknown view {view:?}"))
            }
        }
    })
}

fn describe_json(app: &App, name: &str) -> ApiResult<Value> {
    let handle = handle(app, name)?;
    let specs = app.store.get(name)?.map(|s| s.versions).unwrap_or_default();
    let mut versions = Vec::new();
    for version in handle.versions() {
        let mut v = match handle.progress_of(version) {
            Ok(progress) => progress_json(&progress),
            Err(e) => json!({ "version": version, "error": e.to_string() }),
        };
        v["definition"] = specs.get(&version).map_or(Value::Null, |s| json!(s));
        versions.push(v);
    }
    Ok(json!({
        "name": name,
        "topic": handle.topic(),
        "served_version": handle.version(),
        "swaps": handle.swaps(),
        "versions": versions,
    }))
}

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    app.blocking(|app| {
        let mut views = Vec::new();
        for name in app.engine.views().keys() {
            let handle = handle(app, name)?;
            let served = handle.version();
            let progress = handle.progress().ok();
            views.push(json!({
                "name": name,
                "topic": handle.topic(),
                "served_version": served,
                "versions": handle.versions(),
                "revision": progress.as_ref().map(|p| p.revision.clone()),
                "lag": progress.as_ref().map(VersionProgress::lag),
                "caught_up": progress.as_ref().map(VersionProgress::caught_up),
            }));
        }
        Ok(Json(json!({ "views": views })))
    })
    .await
}

pub async fn describe(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
) -> ApiResult<Json<Value>> {
    app.blocking(move |app| describe_json(app, &view).map(Json)).await
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = read_body(&app, &headers, body, 1 << 20).await?;
    let request: CreateView = json_body(&body)?;
    request
        .definition
        .to_def()
        .map_err(|e| ApiError::bad(&format!("definition.{}", e.key), e.message))?;
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        if app.engine.view(&request.name).is_ok() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                Some("name"),
                format!("view {:?} exists; rebuild it to change its definition", request.name),
            ));
        }
        let version = app.create_view(&request.name, &request.definition)?;
        tracing::info!(view = %request.name, version, "view created over HTTP");
        Ok((StatusCode::CREATED, Json(describe_json(app, &request.name)?)))
    })
    .await
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
) -> ApiResult<Json<Value>> {
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        handle(app, &view)?;
        app.store.remove(&view)?;
        app.engine.delete_view(&view)?;
        tracing::info!(view = %view, "view deleted over HTTP");
        Ok(Json(json!({ "deleted": view })))
    })
    .await
}

fn key_param(params: &Params, name: &str, b64_name: &str) -> ApiResult<Option<Vec<u8>>> {
    match (params.str(name), params.str(b64_name)) {
        (Some(_), Some(_)) => Err(ApiError::bad(b64_name, format!("give {name} or {b64_name}"))),
        (Some(k), None) => Ok(Some(k.as_bytes().to_vec())),
        (None, Some(k)) => base64::engine::general_purpose::STANDARD
            .decode(k)
            .map(Some)
            .map_err(|e| ApiError::bad(b64_name, format!("not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

pub async fn get(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref(), &["key", "key_b64", "window_start"])?;
    let key = key_param(&params, "key", "key_b64")?
        .ok_or_else(|| ApiError::bad("key", "a get needs key (or key_b64)"))?;
    let window_start = params.i64("window_start")?;
    app.blocking(move |app| {
        let handle = handle(app, &view)?;
        let version = handle.version();
        let rows = match window_start {
            Some(start) => handle.get(&key, start)?.into_iter().collect(),
            // Every window of the key (the one window of an unwindowed view).
            None => handle.windows(&key, i64::MIN, i64::MAX)?,
        };
        Ok(Json(json!({
            "version": version,
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        })))
    })
    .await
}

pub async fn range(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref(), &["from", "from_b64", "to", "to_b64", "limit"])?;
    let from = key_param(&params, "from", "from_b64")?.unwrap_or_default();
    let to = key_param(&params, "to", "to_b64")?.unwrap_or_else(|| vec![0xff; 64]);
    let limit =
        params.bounded("limit", 1000, app.settings.config.http.max_read_records as u64)? as usize;
    app.blocking(move |app| {
        let handle = handle(app, &view)?;
        let version = handle.version();
        let rows = handle.range(&from, &to)?;
        Ok(Json(json!({
            "version": version,
            "truncated": rows.len() > limit,
            "rows": rows.iter().take(limit).map(row_json).collect::<Vec<_>>(),
        })))
    })
    .await
}

pub async fn windows(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref(), &["key", "key_b64", "from_ms", "to_ms"])?;
    let key = key_param(&params, "key", "key_b64")?
        .ok_or_else(|| ApiError::bad("key", "a windows query needs key (or key_b64)"))?;
    let from_ms = params.i64("from_ms")?.unwrap_or(i64::MIN);
    let to_ms = params.i64("to_ms")?.unwrap_or(i64::MAX);
    if from_ms > to_ms {
        return Err(ApiError::bad("to_ms", "to_ms must not be before from_ms"));
    }
    app.blocking(move |app| {
        let handle = handle(app, &view)?;
        let version = handle.version();
        let rows = handle.windows(&key, from_ms, to_ms)?;
        Ok(Json(
            json!({ "version": version, "rows": rows.iter().map(row_json).collect::<Vec<_>>() }),
        ))
    })
    .await
}

pub async fn rebuild(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = read_body(&app, &headers, body, 1 << 20).await?;
    let spec: ViewSpec = json_body(&body)?;
    spec.to_def().map_err(|e| ApiError::bad(&e.key, e.message))?;
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        let handle = handle(app, &view)?;
        if spec.topic != handle.topic() {
            return Err(ApiError::bad(
                "topic",
                format!("a rebuild of {view:?} must read topic {:?}", handle.topic()),
            ));
        }
        let version = app.rebuild_view(&view, &spec)?;
        tracing::info!(view = %view, version, "view rebuild started over HTTP");
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "view": view,
                "version": version,
                "served_version": handle.version(),
                "progress": format!("/v1/views/{view}/versions/{version}/progress"),
                "stream": format!("/v1/views/{view}/versions/{version}/progress/stream"),
            })),
        ))
    })
    .await
}

fn version_number(text: &str) -> ApiResult<u32> {
    text.parse().map_err(|_| ApiError::bad("version", format!("version {text:?} is not a number")))
}

pub async fn progress(
    State(app): State<Arc<App>>,
    Path((view, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let version = version_number(&version)?;
    app.blocking(move |app| {
        let progress = handle(app, &view)?.progress_of(version)?;
        Ok(Json(progress_json(&progress)))
    })
    .await
}

/// Server-sent events: `progress` every 250 ms until the version caught up, then `done` (or
/// `error` when the version goes away). Ends early when the server shuts down.
pub async fn progress_stream(
    State(app): State<Arc<App>>,
    Path((view, version)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let version = version_number(&version)?;
    // Refuse an unknown view or version with a status, before the stream starts.
    let (first, h) = {
        let view = view.clone();
        app.blocking(move |app| {
            let h = handle(app, &view)?;
            Ok((h.progress_of(version)?, h))
        })
        .await?
    };
    struct State {
        app: Arc<App>,
        handle: ViewHandle,
        version: u32,
        next: Option<VersionProgress>,
        finished: bool,
    }
    let state = State { app, handle: h, version, next: Some(first), finished: false };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let progress = match st.next.take() {
            Some(p) => Ok(p),
            None => {
                let mut stop = st.app.stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(PROGRESS_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
                let handle = st.handle.clone();
                let version = st.version;
                st.app.blocking(move |_| Ok(handle.progress_of(version)?)).await
            }
        };
        let event = match progress {
            Ok(p) => {
                let mut data = progress_json(&p);
                data["served_version"] = st.handle.version().into();
                if p.caught_up() {
                    st.finished = true;
                    Event::default().event("done").data(data.to_string())
                } else {
                    Event::default().event("progress").data(data.to_string())
                }
            }
            Err(e) => {
                st.finished = true;
                Event::default().event("error").data(json!({ "error": e.message }).to_string())
            }
        };
        Some((Ok(event), st))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn serve_version(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body = read_body(&app, &headers, body, 64 * 1024).await?;
    let request: ServeVersion = json_body(&body)?;
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        let handle = handle(app, &view)?;
        let previous = handle.version();
        if !handle.versions().contains(&request.version) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                Some("version"),
                format!(
                    "version {} of {view:?} is not running (running: {:?})",
                    request.version,
                    handle.versions()
                ),
            ));
        }
        app.engine.serve_view_version(&view, request.version)?;
        app.store.rolled_back_to(&view, request.version)?;
        tracing::info!(view = %view, from = previous, to = request.version, "view version served over HTTP");
        Ok(Json(json!({ "view": view, "served_version": request.version, "previous": previous })))
    })
    .await
}

pub async fn drop_version(
    State(app): State<Arc<App>>,
    Path((view, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let version = version_number(&version)?;
    let _guard = app.control.lock().await;
    app.blocking(move |app| {
        handle(app, &view)?;
        app.engine.drop_view_version(&view, version).map_err(|e| match e {
            kappa_engine::Error::Config { reason, .. } => {
                ApiError::new(StatusCode::CONFLICT, Some("version"), reason)
            }
            other => ApiError::from(other),
        })?;
        app.store.remove_version(&view, version)?;
        Ok(Json(json!({ "view": view, "dropped_version": version })))
    })
    .await
}
