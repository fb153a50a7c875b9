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
        .layer(axum::middleware::from_fn_with_state(app.clone(), deadline))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        Some("path"),
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "uptime_s": app.started.elapsed().as_secs_f64() }))
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
    let Some(token) = &app.settings.token else { return next.run(request).await };
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
    let method = request.method().to_string();
    #[allow(clippy::disallowed_methods)] // Request latency is observability, never a decision.
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    app.http.observe(&route, &method, response.status().as_u16(), started.elapsed());
    response
}

/// The most a refused body is read before answering 413.
const DRAIN_MAX: usize = 16 << 20;

async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Reads a request body within the size limit and the body deadline; both refusals name `body`.
pub async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<Bytes> {
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
    let deadline = Duration::from_millis(app.settings.config.http.body_timeout_ms);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let limited = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if limited {
                Err(too_large())
            } else {
                Err(ApiError::bad("body", format!("reading the body failed: {e}")))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Some("body"),
            format!("the body did not arrive within {} ms", deadline.as_millis()),
        )),
    }
}
