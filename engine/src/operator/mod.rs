//! Operators: the pure functions a view's pipeline is made of.
//!
//! A pipeline is `filter -> key by -> map (the number to aggregate) -> window -> aggregate`. Every
//! operator reads records zero-copy (`RecordRef`), never reads the wall clock and does no I/O, so a
//! view is a pure function of the log prefix it consumed: replaying the log gives the same bytes.
//! Event time comes from record timestamps. What each step does with a record it cannot use is
//! in `docs/semantics.md`; every such record is counted by cause, never dropped silently.

pub mod aggregate;
pub mod exact;
pub mod json;
pub mod window;

use std::sync::Arc;

use kappa_storage::RecordRef;

pub use aggregate::{AggState, Aggregate, CustomAggregate};
pub use exact::ExactSum;
pub use json::{json_number, JsonPath, PathError, Skip};
pub use window::Window;

/// Keeps a record (`true`) or drops it from the view.
pub type FilterFn = Arc<dyn Fn(&RecordRef<'_>) -> bool + Send + Sync>;
/// Writes a record's grouping key into the buffer (cleared before the call); `false` skips the record.
pub type KeyFn = Arc<dyn Fn(&RecordRef<'_>, &mut Vec<u8>) -> bool + Send + Sync>;
/// The number a record contributes to the aggregate, or why it has none.
pub type MapFn = Arc<dyn Fn(&RecordRef<'_>) -> Result<f64, Skip> + Send + Sync>;

/// What a `map` closure may return: `Option<f64>` (`None` counts as `Skip::NoField`), or
/// `Result<f64, Skip>` to say why a record has no number.
pub trait MapOutput {
    fn into_value(self) -> Result<f64, Skip>;
}

impl MapOutput for Option<f64> {
    fn into_value(self) -> Result<f64, Skip> {
        self.ok_or(Skip::NoField)
    }
}

impl MapOutput for Result<f64, Skip> {
    fn into_value(self) -> Result<f64, Skip> {
        self
    }
}

impl MapOutput for f64 {
    fn into_value(self) -> Result<f64, Skip> {
        Ok(self)
    }
}

/// How records are grouped.
#[derive(Clone)]
pub enum KeyBy {
    /// The record's key (records without one are skipped).
    RecordKey,
    /// A key derived from the record by a closure.
    Derived(KeyFn),
    /// The value at a JSON path (`ViewDef::key_by_json`): a record whose value is not well-formed
    /// JSON counts as `not_json`, one without a usable value there as `no_key`.
    Json(JsonPath),
}

/// What happens to a record whose window (or session) is already closed: its end is at or below
/// the partition's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Count it and leave closed windows as they are.
    Drop,
    /// Count it and update the closed window anyway.
    Update,
}
