//! A view's definition: the pipeline over one topic, its event-time policy, and where a build starts.

use crate::operator::{Aggregate, FilterFn, KeyBy, LatePolicy, MapFn, Window};

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
    /// The watermark trails the largest event time seen in a partition by this much.
    pub allowed_lateness_ms: i64,
    pub late: LatePolicy,
    /// A checkpoint every this many records consumed (a record count, not a timer: deterministic).
    pub checkpoint_every_records: u64,
    pub start: Start,
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
    pub fn map(
        mut self,
        f: impl Fn(&kappa_storage::RecordRef<'_>) -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        self.map = Some(std::sync::Arc::new(f));
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

    /// Checks the definition as `Engine::create_view` and `rebuild_view` will.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |reason: &str| {
            Err(crate::Error::Config { field: "view definition", reason: reason.to_string() })
        };
        if let Err(reason) = self.window.validate() {
            return bad(reason);
        }
        if self.aggregate.needs_value() && self.map.is_none() {
            return bad("this aggregate needs a `map` giving the number to aggregate");
        }
        if !self.aggregate.is_mergeable() && !matches!(self.key, crate::operator::KeyBy::RecordKey)
        {
            return bad("a non-mergeable aggregate needs key_by(record key): a derived key spreads over partitions");
        }
        if self.allowed_lateness_ms < 0 {
            return bad("allowed lateness must not be negative");
        }
        if self.checkpoint_every_records == 0 {
            return bad("checkpoint_every_records must be at least 1");
        }
        if self.revision.is_empty()
            || !self.revision.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("revision must be non-empty ASCII letters, digits, '.', '_' or '-'");
        }
        Ok(())
    }
}
