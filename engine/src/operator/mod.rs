//! Operators: the pure functions a view's pipeline is made of.
//!
//! A pipeline is `filter -> key by -> map (the number to aggregate) -> window -> aggregate`. Every
//! operator reads records zero-copy (`RecordRef`), never reads the wall clock and does no I/O, so a
//! view is a pure function of the log prefix it consumed: replaying the log gives the same bytes.
//! Event time comes from record timestamps.

pub mod aggregate;
pub mod window;

use std::sync::Arc;

use kappa_storage::RecordRef;

pub use aggregate::{AggState, Aggregate, CustomAggregate};
pub use window::Window;

/// Keeps a record (`true`) or drops it from the view.
pub type FilterFn = Arc<dyn Fn(&RecordRef<'_>) -> bool + Send + Sync>;
/// Writes a record's grouping key into the buffer (cleared before the call); `false` skips the record.
pub type KeyFn = Arc<dyn Fn(&RecordRef<'_>, &mut Vec<u8>) -> bool + Send + Sync>;
/// The number a record contributes to the aggregate; `None` skips the record.
pub type MapFn = Arc<dyn Fn(&RecordRef<'_>) -> Option<f64> + Send + Sync>;

/// How records are grouped.
#[derive(Clone)]
pub enum KeyBy {
    /// The record's key (records without one are skipped).
    RecordKey,
    /// A key derived from the record (for example a JSON field).
    Derived(KeyFn),
}

/// What happens to a record that arrives after its window closed (event time below the watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Count it and leave closed windows as they are.
    Drop,
    /// Count it and update the closed window anyway.
    Update,
}

/// Reads an ASCII decimal number after `"field":` in a JSON-ish value, without allocating: enough
/// for the appliance's "aggregate over a JSON field" and the demo. Not a JSON parser.
pub fn json_number(value: &[u8], field: &str) -> Option<f64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut at = 0;
    while let Some(found) = text[at..].find(field) {
        let start = at + found;
        let before = start.checked_sub(1).map(|i| text.as_bytes()[i]);
        let after = text[start + field.len()..].trim_start();
        if before == Some(b'"') && after.starts_with('"') {
            let rest = after[1..].trim_start().strip_prefix(':')?.trim_start();
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_digit()
                        || c == '.'
                        || c == '-'
                        || c == 'e'
                        || c == 'E'
                        || c == '+')
                })
                .unwrap_or(rest.len());
            return rest[..end].parse().ok();
        }
        at = start + field.len();
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_number_finds_fields() {
        let v = br#"{"sensor":12,"temp_c":21.5,"x":"temp_c"}"#;
        assert_eq!(super::json_number(v, "temp_c"), Some(21.5));
        assert_eq!(super::json_number(v, "sensor"), Some(12.0));
        assert_eq!(super::json_number(v, "missing"), None);
        assert_eq!(super::json_number(br#"{"a": -3.5e2}"#, "a"), Some(-350.0));
    }
}
