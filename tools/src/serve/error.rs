//! HTTP errors as JSON that name the field at fault, and query-string parsing that does the same.
//!
//! Every refusal is `{"error": "...", "field": "...", "status": N}` (plus `line` or `index` for a
//! record in a batch), so a client can tell which input to fix. Engine errors map to the status a
//! client can act on: unknown things 404, conflicts 409, a full disk 507, shutdown 503.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kappa_engine::Durability;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Where in a batch: `("line", 3)` for NDJSON, `("index", 2)` for a JSON array.
    pub position: Option<(&'static str, u64)>,
    /// Seconds for a `Retry-After` header (a refusal for load, not for the input).
    pub retry_after_s: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: field.map(str::to_string),
            position: None,
            retry_after_s: None,
        }
    }
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, Some(field), message)
    }
    pub fn too_large(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, Some(field), message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, message)
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }
    pub fn at(mut self, what: &'static str, n: u64) -> Self {
        self.position = Some((what, n));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": self.message,
            "status": self.status.as_u16(),
        });
        if let Some(field) = &self.field {
            body["field"] = field.clone().into();
        }
        if let Some((what, n)) = self.position {
            body[what] = n.into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

impl From<kappa_engine::Error> for ApiError {
    fn from(e: kappa_engine::Error) -> Self {
        use kappa_engine::Error as E;
        let message = e.to_string();
        if e.is_disk_full() {
            return ApiError::new(StatusCode::INSUFFICIENT_STORAGE, None, message);
        }
        let (status, field) = match &e {
            E::UnknownTopic { .. } => (StatusCode::NOT_FOUND, Some("topic")),
            E::UnknownPartition { .. } => (StatusCode::NOT_FOUND, Some("partition")),
            E::TopicExists { .. } => (StatusCode::CONFLICT, Some("name")),
            E::BadTopicName { .. } => (StatusCode::BAD_REQUEST, Some("name")),
            E::TopicInUse { .. } => (StatusCode::CONFLICT, Some("topic")),
            E::UnknownView { .. } => (StatusCode::NOT_FOUND, Some("view")),
            // The view's code panicked on a record: its rows are not answerable until rebuilt.
            E::Poisoned { .. } => (StatusCode::CONFLICT, Some("view")),
            E::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, None),
            E::WouldBlock { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
            E::Config { field, .. } => (StatusCode::BAD_REQUEST, Some(*field)),
            E::Storage(s) => match s {
                kappa_engine::storage::Error::RecordTooLarge { .. }
                | kappa_engine::storage::Error::BatchTooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, Some("records"))
                }
                kappa_engine::storage::Error::EmptyBatch => {
                    (StatusCode::BAD_REQUEST, Some("records"))
                }
                kappa_engine::storage::Error::OffsetOutOfRange { .. } => {
                    (StatusCode::RANGE_NOT_SATISFIABLE, Some("offset"))
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
            },
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, field, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = format!("{e:#}"), "request failed");
        ApiError::internal(format!("{e:#}"))
    }
}

/// A query string, parsed strictly: an unknown parameter is refused by name (a typo such as
/// `durabilty` must not be silently ignored), and every value is checked as the handler reads it.
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> ApiResult<Params> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| ApiError::bad("query", format!("bad query string: {e}")))?;
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad(
                    &key,
                    format!("unknown query parameter {key:?}; expected one of {allowed:?}"),
                ));
            }
            if values.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad(&key, format!("{key:?} given twice")));
            }
        }
        Ok(Params { values })
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn parsed<T: std::str::FromStr>(&self, key: &str, what: &str) -> ApiResult<Option<T>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad(key, format!("{key}={v:?} is not {what}"))),
        }
    }

    pub fn u64(&self, key: &str) -> ApiResult<Option<u64>> {
        self.parsed(key, "a non-negative integer")
    }

    pub fn i64(&self, key: &str) -> ApiResult<Option<i64>> {
        self.parsed(key, "an integer")
    }

    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        self.parsed(key, "true or false")
    }

    pub fn durability(&self, key: &str) -> ApiResult<Option<Durability>> {
        self.parsed(key, "a durability (none, written or synced)")
    }

    /// A bounded count: at most `max`, at least 1.
    pub fn bounded(&self, key: &str, default: u64, max: u64) -> ApiResult<u64> {
        let value = self.u64(key)?.unwrap_or(default.min(max));
        if value == 0 || value > max {
            return Err(ApiError::bad(key, format!("{key} must be between 1 and {max}")));
        }
        Ok(value)
    }
}

/// The field a serde_path_to_error path points at: `[3].value` -> (`value`, Some(3)).
pub fn field_of(path: &serde_path_to_error::Path) -> (String, Option<u64>) {
    let mut index = None;
    let mut parts = Vec::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index: i }
                if parts.is_empty() && index.is_none() =>
            {
                index = Some(*i as u64)
            }
            serde_path_to_error::Segment::Seq { index: i } => parts.push(i.to_string()),
            serde_path_to_error::Segment::Map { key } => parts.push(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => parts.push(variant.clone()),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    (parts.join("."), index)
}

/// Deserializes a JSON body, naming the field of the first error.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let (field, _) = field_of(e.path());
        let inner = e.into_inner();
        // "missing field `x`" is reported at the enclosing object: name the field itself.
        let message = inner.to_string();
        let field = match message.strip_prefix("missing field `").and_then(|r| r.split('`').next())
        {
            Some(missing) if field.is_empty() => missing.to_string(),
            Some(missing) => format!("{field}.{missing}"),
            None if field.is_empty() => "body".to_string(),
            None => field,
        };
        ApiError::bad(&field, message)
    })?;
    de.end().map_err(|e| ApiError::bad("body", e.to_string()))?;
    Ok(value)
}
