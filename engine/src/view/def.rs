//! A view's definition: the pipeline over one topic, its event-time policy, and where a build starts.

use crate::operator::{Aggregate, FilterFn, JsonPath, KeyBy, LatePolicy, MapFn, MapOutput, Window};

/// Where a new view version starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Offset 0. Refused with `Error::ViewBeforeLogStart` once retention deleted offset 0: a view
    /// over part of the history is asked for with `EarliestRetained`.
    Beginning,
    /// The first record still in the log (the start offset after retention).
    EarliestRetained,
    /// The first record at or after this event time (ms).
    Timestamp(i64),
    /// The newest checkpoint of another version of the same view whose state this definition can
    /// continue (same key, window and aggregate; say, a changed filter that applies from now on),
    /// then the log after it. Falls back to the beginning where that version has no checkpoint.
    /// That version must be running, and its key, window and aggregate must be this
    /// definition's (a `key_by` closure or custom aggregate the same `Arc`, as in a
    /// `ViewDef::clone`); otherwise the build is refused with an error naming the field.
    Checkpoint { version: u32 },
}

/// What a view does with a record on which its user code (a filter, key or map closure) panics.
/// Like Kafka Streams' processing exception handlers: fail (the default) or skip and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// The version fails: its queries return `Error::Poisoned` naming partition, offset and the
    /// panic message, and it stays failed across restarts until rebuilt or dropped.
    #[default]
    Fail,
    /// The record is skipped and counted (`Counters::panicked`); its offset is consumed. A panic
    /// inside a custom aggregate still fails the version: its state may be half updated.
    Skip,
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
    /// A record whose user code panics fails the version (default) or is skipped and counted.
    pub on_error: OnError,
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
            on_error: OnError::Fail,
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
    /// Groups by the value at a JSON path (`a.b.c`): a string's text, a number as
    /// `JsonPath::key_into` writes it, or `true`/`false`; records without one are counted as "no
    /// key", records that are not well-formed JSON as "not JSON".
    pub fn key_by_json(mut self, path: &str) -> Self {
        match JsonPath::parse(path) {
            Ok(path) => self.key = KeyBy::Json(path),
            Err(e) => self.invalid = Some(("key_by_json", e.to_string())),
        }
        self
    }
    /// What a panic in this view's filter, key or map closure does (`OnError::Fail` by default).
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
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

    /// Why a state built by `seed` cannot be continued by this definition (`Start::Checkpoint`):
    /// the first of key, window and aggregate that differs, as (field, reason).
    pub(crate) fn cannot_continue(&self, seed: &ViewDef) -> Option<(&'static str, String)> {
        let same_key = match (&self.key, &seed.key) {
            (KeyBy::RecordKey, KeyBy::RecordKey) => true,
            (KeyBy::Json(a), KeyBy::Json(b)) => a == b,
            (KeyBy::Derived(a), KeyBy::Derived(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same_key {
            return Some(("key", "the key differs (a key_by closure must be the same Arc)".into()));
        }
        if self.window != seed.window {
            return Some((
                "window",
                format!("the window is {:?}, the checkpoint's {:?}", self.window, seed.window),
            ));
        }
        let same_aggregate = match (&self.aggregate, &seed.aggregate) {
            (Aggregate::Custom(a), Aggregate::Custom(b)) => std::sync::Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        };
        if !same_aggregate {
            return Some((
                "aggregate",
                format!(
                    "the aggregate is {:?}, the checkpoint's {:?} (a custom one must be the same Arc)",
                    self.aggregate, seed.aggregate
                ),
            ));
        }
        None
    }

    /// Key, window and aggregate as text, as (field, text), for `Start::Checkpoint` from a
    /// version that is not running (`DIR/views/NAME/VERSION/shape`). `None` for a closure or a
    /// custom aggregate, which no text identifies.
    pub(crate) fn shape(&self) -> [(&'static str, Option<String>); 3] {
        let key = match &self.key {
            KeyBy::RecordKey => Some("record key".to_string()),
            KeyBy::Json(path) => Some(format!("json {:?}", path.segments().collect::<Vec<_>>())),
            KeyBy::Derived(_) => None,
        };
        let aggregate = match &self.aggregate {
            Aggregate::Custom(_) => None,
            a => Some(format!("{a:?}")),
        };
        [("key", key), ("window", Some(format!("{:?}", self.window))), ("aggregate", aggregate)]
    }

    /// `shape` as text, one `field=text` line per field that text identifies: the version's
    /// `shape` file, and what its checkpoints record of the definition that built them.
    pub(crate) fn shape_text(&self) -> String {
        self.shape()
            .iter()
            .filter_map(|(field, text)| text.as_ref().map(|t| format!("{field}={t}\n")))
            .collect()
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
