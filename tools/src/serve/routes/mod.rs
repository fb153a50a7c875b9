//! The HTTP API's routes and the layers every request passes: auth, a deadline, metrics.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | status page (HTML; refreshes itself from `/v1/status`) |
//! | GET | `/health`, `/ready` | liveness; readiness (503 while starting or draining) |
//! | GET | `/metrics` | Prometheus (OpenMetrics text) |
//! | GET | `/v1/status` | what the status page shows, as JSON |
//! | GET, POST | `/v1/topics` | list; create `{name, partitions, retention_ms?, ...}` |
//! | GET, DELETE | `/v1/topics/{topic}` | describe; delete |
//! | POST | `/v1/topics/{topic}/records` | append NDJSON or a JSON array (`?durability=`) |
//! | GET | `/v1/topics/{topic}/partitions/{p}/records` | read from `offset`/`timestamp`/`from` |
//! | GET, POST | `/v1/views` | list; create `{name, definition}` |
//! | GET, DELETE | `/v1/views/{view}` | describe; delete |
//! | GET | `/v1/views/{view}/get`, `/range`, `/windows` | queries |
//! | POST | `/v1/views/{view}/rebuild` | a new version from a definition (202 at once) |
//! | POST | `/v1/views/{view}/serve` | serve another running version (rollback) |
//! | GET | `/v1/views/{view}/versions/{v}/progress[/stream]` | progress; as server-sent events |
//! | DELETE | `/v1/views/{view}/versions/{v}` | drop a version that is not served |

pub mod records;
pub mod status;
pub mod topics;
mod unread;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::app::App;
use super::error::{ApiError, ApiResult};

/// Every route, behind auth, a deadline and request metrics.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/", get(status::page))
        .route("/metrics", get(super::metrics::scrape))
        .route("/v1/status", get(status::json))
        .route("/v1/topics", get(topics::list).post(topics::create))
        .route("/v1/topics/{topic}", get(topics::describe).delete(topics::delete))
        .route("/v1/topics/{topic}/records", post(records::post))
        .route("/v1/topics/{topic}/partitions/{partition}/records", get(records::get))
        .route("/v1/views", get(views::list).post(views::create))
        .route("/v1/views/{view}", get(views::describe).delete(views::delete))
        .route("/v1/views/{view}/get", get(views::get))
        .route("/v1/views/{view}/range", get(views::range))
        .route("/v1/views/{view}/windows", get(views::windows))
        .route("/v1/views/{view}/rebuild", post(views::rebuild))
        .route("/v1/views/{view}/serve", post(views::serve_version))
        .route("/v1/views/{view}/versions/{version}", axum::routing::delete(views::drop_version))
        .route("/v1/views/{view}/versions/{version}/progress", get(views::progress))
        .route("/v1/views/{view}/versions/{version}/progress/stream", get(views::progress_stream))
        .layer(axum::middleware::from_fn(content_type))
        .layer(axum::middleware::from_fn_with_state(app.clone(), deadline))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .layer(axum::middleware::from_fn(unread::close_if_unread))
        .with_state(app)
}

/// Media types a POST may carry: JSON everywhere, NDJSON too for records. Anything else (above
/// all `text/plain`, `application/x-www-form-urlencoded` and `multipart/form-data`, which a web
/// page may send cross-site without a CORS preflight) is refused with 415, so another site in
/// the operator's browser cannot change state; the server never grants a preflight.
const NDJSON_TYPES: [&str; 3] = ["application/x-ndjson", "application/ndjson", "application/jsonl"];

async fn content_type(request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let essence = given.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let records = request.uri().path().ends_with("/records");
    if essence == "application/json" || (records && NDJSON_TYPES.contains(&essence.as_str())) {
        return next.run(request).await;
    }
    let allowed =
        if records { "application/x-ndjson or application/json" } else { "application/json" };
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Some("content-type"),
        format!("content-type {given:?}: send {allowed}"),
    )
    .into_response()
}

/// Every error answer is JSON naming a field, including the ones axum writes itself (405 for a
/// method a route lacks, 400 for a path segment that does not decode, ...): their text is kept
/// as the message, and the field is the one it names in backquotes (`topic`), or `method`.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let field = if status == StatusCode::METHOD_NOT_ALLOWED {
        "method".to_string()
    } else {
        text.split('`').nth(1).filter(|f| !f.is_empty()).unwrap_or("request").to_string()
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = json!({ "error": message, "field": field, "status": status.as_u16() });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// Without a token, only loopback names may reach the API: a page on another site whose name
/// re-resolves to 127.0.0.1 (DNS rebinding) sends its own name as `Host` and is refused, so it
/// cannot read or change anything. `localhost`, loopback addresses and the bound address pass.
fn host_allowed(host: &str, bound: std::net::SocketAddr) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:9680`
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip == bound.ip())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Some("path"),
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// Alive (200) whatever the views do; `degraded` with the views that could not be opened at
/// start, each with its reason.
async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let failed: Vec<_> = app
        .failed_views
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    let status = if failed.is_empty() { "ok" } else { "degraded" };
    Json(json!({
        "status": status,
        "uptime_s": app.started.elapsed().as_secs_f64(),
        "failed_views": failed,
    }))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() && !app.stopping() {
        Json(json!({ "ready": true })).into_response()
    } else {
        let reason = if app.stopping() { "shutting down" } else { "starting" };
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reason })))
            .into_response()
    }
}

/// Compares in time independent of where the first difference is.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// With a token configured, every route here needs `Authorization: Bearer <token>`, except the
/// status page's HTML shell (it holds no data; its script asks for the token).
async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.settings.token else {
        let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("?"));
        if let Some(host) = host {
            if !host_allowed(host, app.settings.http_addr) {
                return ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    Some("host"),
                    format!(
                        "Host {host:?} is not a loopback name: without http.token this server \
                         answers only localhost and loopback addresses"
                    ),
                )
                .into_response();
            }
        }
        return next.run(request).await;
    };
    if request.uri().path() == "/" {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_token(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                Some("authorization"),
                "this server needs `Authorization: Bearer <token>`",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// A request must be answered within `request_timeout_ms` (streams only need to start).
async fn deadline(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let limit = Duration::from_millis(app.settings.config.http.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            format!("the request took longer than {} ms", limit.as_millis()),
        )
        .into_response(),
    }
}

/// Request counts and latencies by route and status.
async fn observe(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    // A fixed set of labels: a made-up method must not create a series (any client can send
    // one, before auth).
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    #[allow(clippy::disallowed_methods)] // Request latency is observability, never a decision.
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    app.http.observe(&route, method, response.status().as_u16(), started.elapsed());
    response
}

/// The most a refused body is read before answering 413.
const DRAIN_MAX: usize = 16 << 20;

async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    while let Some(Ok(_)) = body.frame().await {}
}

/// A request body, and its share of the in-flight body budget (`http.max_in_flight_body_bytes`),
/// held until the handler is done with the bytes.
pub struct ReadBody {
    pub bytes: Bytes,
    _budget: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for ReadBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The budget counts KiB (a semaphore takes at most u32::MAX permits at once).
pub fn budget_units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

fn budget_full(app: &App) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Some("body"),
        format!(
            "the server holds {} bytes of request bodies, its limit \
             (http.max_in_flight_body_bytes): retry later",
            app.settings.config.http.max_in_flight_body_bytes
        ),
    )
    .retry_after(1)
}

/// Reads a request body within the size limit, the body deadline and the global budget of
/// in-flight body bytes (so memory is bounded whatever clients send: past the budget a request
/// gets 503 with `Retry-After`). Refusals name `body`.
pub async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<ReadBody> {
    let too_large =
        || ApiError::too_large("body", format!("the body is larger than {limit} bytes"));
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: usize = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| ApiError::bad("content-length", "not a number"))?;
        if length > limit {
            // Read (and drop) a moderately larger body first: a client that sends its whole
            // body before reading the answer then sees the 413 instead of a reset connection.
            if length <= limit.saturating_mul(4).max(DRAIN_MAX) {
                let deadline = Duration::from_millis(app.settings.config.http.body_timeout_ms);
                let _ = tokio::time::timeout(deadline, drain(body)).await;
            }
            return Err(too_large());
        }
    }
    let length: Option<usize> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.parse().ok());
    // A declared length takes its share before a byte is read; a chunked body takes it as it
    // arrives.
    let mut budget = app
        .body_budget
        .clone()
        .try_acquire_many_owned(budget_units(length.unwrap_or(0)))
        .map_err(|_| budget_full(app))?;
    let collect = async {
        use http_body_util::BodyExt;
        let mut body = body;
        let mut bytes = Vec::with_capacity(length.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad("body", format!("reading the body failed: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            let units = budget_units(bytes.len() + data.len());
            if units > budget.num_permits() as u32 {
                let more = app
                    .body_budget
                    .clone()
                    .try_acquire_many_owned(units - budget.num_permits() as u32)
                    .map_err(|_| budget_full(app))?;
                budget.merge(more);
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Bytes::from(bytes))
    };
    let deadline = Duration::from_millis(app.settings.config.http.body_timeout_ms);
    match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(bytes)) => Ok(ReadBody { bytes, _budget: budget }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Some("body"),
            format!("the body did not arrive within {} ms", deadline.as_millis()),
        )),
    }
}
