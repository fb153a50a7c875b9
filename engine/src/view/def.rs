//! A view's definition: the pipeline over one topic, its event-time policy, and where a build starts.

use crate::operator::{Aggregate, FilterFn, JsonPath, KeyBy, LatePolicy, MapFn, MapOutput, Window};

/// Where a new view version starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Offset 0 (the first record still in the log).
    Beginning,
    /// The first record at or after this event time (ms).
    Timestamp(i64),
    /// The newest checkpoint of another version of the same view whose state this definition can
    /// continue (same key, window and aggregate; say, a changed filter that applies from now on),
    /// then the log after it. Falls back to the beginning where that version has no checkpoint.
    Checkpoint { version: u32 },
}

/// A view over one topic. Built with `ViewDef::new(topic).key_by(..).window(..).aggregate(..)`.
///
/// Operators must be pure: no wall clock, no I/O, no randomness. Then a view is a function of the
/// log prefix it consumed, and rebuilding it by replay gives the same bytes.
#[derive(Clone)]
pub struct ViewDef {
    pub topic: String,
    /// Names this definition: restarting with the same revision resumes the version built from it;
    /// a different revision is a different definition (rebuild it with `Engine::rebuild_view`).
    pub revision: String,
    pub filter: Option<FilterFn>,
    pub key: KeyBy,
    pub map: Option<MapFn>,
    pub window: Window,
    pub aggregate: Aggregate,
    /// The watermark trails the largest event time of the records a partition consumed (every
    /// one with an event time in range, used by this view or not) by this much.
    pub allowed_lateness_ms: i64,
    pub late: LatePolicy,
    /// A checkpoint every this many records consumed (a record count, not a timer: deterministic).
    pub checkpoint_every_records: u64,
    pub start: Start,
    /// A builder argument that could not be used (say, a bad JSON path), reported by `validate`.
    pub(crate) invalid: Option<(&'static str, String)>,
}

impl ViewDef {
    pub fn new(topic: impl Into<String>) -> Self {
        ViewDef {
            topic: topic.into(),
            revision: "1".into(),
            filter: None,
            key: KeyBy::RecordKey,
            map: None,
            window: Window::None,
            aggregate: Aggregate::Count,
            allowed_lateness_ms: 0,
            late: LatePolicy::Drop,
            checkpoint_every_records: 1_000_000,
            start: Start::Beginning,
            invalid: None,
        }
    }
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }
    pub fn filter(
        mut self,
        f: impl Fn(&kappa_storage::RecordRef<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(std::sync::Arc::new(f));
        self
    }
    pub fn key_by(
        mut self,
        f: impl Fn(&kappa_storage::RecordRef<'_>, &mut Vec<u8>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.key = KeyBy::Derived(std::sync::Arc::new(f));
        self
    }
    /// The number each record contributes: the closure returns `Option<f64>` (`None` is counted
    /// as "no field") or `Result<f64, Skip>` (counted by cause).
    pub fn map<R: MapOutput>(
        mut self,
        f: impl Fn(&kappa_storage::RecordRef<'_>) -> R + Send + Sync + 'static,
    ) -> Self {
        self.map = Some(std::sync::Arc::new(move |r| f(r).into_value()));
        self
    }
    /// Aggregates the number at a JSON path (`a.b.c`) in each record's value; records without it
    /// are counted by cause (no field, not a number, not JSON).
    pub fn map_json(mut self, path: &str) -> Self {
        match JsonPath::parse(path) {
            Ok(path) => {
                let map: MapFn = std::sync::Arc::new(move |r| path.number(r.value()));
                self.map = Some(map);
            }
            Err(e) => self.invalid = Some(("map_json", e.to_string())),
        }
        self
    }
    /// Groups by the value at a JSON path (`a.b.c`): a string's text, a number as printed, or
    /// `true`/`false`; records without one are counted as "no key".
    pub fn key_by_json(mut self, path: &str) -> Self {
        match JsonPath::parse(path) {
            Ok(path) => {
                self.key = KeyBy::Derived(std::sync::Arc::new(move |r, key| {
                    path.key_into(r.value(), key).is_ok()
                }));
            }
            Err(e) => self.invalid = Some(("key_by_json", e.to_string())),
        }
        self
    }
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }
    pub fn aggregate(mut self, aggregate: Aggregate) -> Self {
        self.aggregate = aggregate;
        self
    }
    pub fn lateness(mut self, allowed_lateness_ms: i64, late: LatePolicy) -> Self {
        self.allowed_lateness_ms = allowed_lateness_ms;
        self.late = late;
        self
    }
    pub fn checkpoint_every(mut self, records: u64) -> Self {
        self.checkpoint_every_records = records;
        self
    }
    pub fn start(mut self, start: Start) -> Self {
        self.start = start;
        self
    }

    /// Refuses, naming the field, every definition the engine cannot compute exactly.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |field: &'static str, reason: &str| {
            Err(crate::Error::Config { field, reason: reason.to_string() })
        };
        if let Some((field, reason)) = &self.invalid {
            return bad(field, reason);
        }
        if let Err((field, reason)) = self.window.validate() {
            return bad(field, &reason);
        }
        if self.aggregate.needs_value() && self.map.is_none() {
            return bad("map", "this aggregate needs a `map` giving the number to aggregate");
        }
        if !self.aggregate.is_mergeable() && !matches!(self.key, crate::operator::KeyBy::RecordKey)
        {
            return bad(
                "aggregate",
                "a non-mergeable aggregate needs key_by(record key): a derived key spreads over \
                 partitions, whose partial results it cannot merge",
            );
        }
        if !self.aggregate.is_mergeable() && matches!(self.window, Window::Session { .. }) {
            return bad(
                "aggregate",
                "a non-mergeable aggregate cannot have session windows: sessions merge when an \
                 event bridges them",
            );
        }
        if !(0..=crate::operator::window::DURATION_MS_MAX).contains(&self.allowed_lateness_ms) {
            return bad(
                "allowed_lateness_ms",
                &format!(
                    "{} must be in 0..={} ms",
                    self.allowed_lateness_ms,
                    crate::operator::window::DURATION_MS_MAX
                ),
            );
        }
        if self.checkpoint_every_records == 0 {
            return bad("checkpoint_every_records", "must be at least 1");
        }
        if self.revision.is_empty()
            || !self.revision.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("revision", "must be non-empty ASCII letters, digits, '.', '_' or '-'");
        }
        Ok(())
    }
}
