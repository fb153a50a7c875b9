//! View definitions as data: the same shape in `kappa.toml` (`[[views]]`) and in HTTP bodies.
//!
//! The embedded API builds a `ViewDef` from Rust closures; an operator of the appliance writes a
//! definition instead, with JSON field paths where the closures would read a record. A `ViewSpec`
//! is flat on purpose (no tagged enums), so every mistake is reported with the exact key that
//! holds it (`window.size_ms`), in the config file (with line and column) and in HTTP answers.
//! Its revision, unless given, is a hash of the definition: the same definition resumes its
//! version after a restart, and a changed one is a new version.

use serde::{Deserialize, Serialize};

use kappa_engine::operator::{Aggregate, LatePolicy, Window};
use kappa_engine::{Start, ViewDef};

use kappa_engine::operator::JsonPath;

/// A view definition as an operator writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// The topic the view reads.
    pub topic: String,
    /// Names the definition; by default a hash of the rest of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Keeps only the records that pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,
    /// Groups by this JSON field of the value; by the record key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// The JSON number field the aggregate folds (all but `count` need one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_field: Option<String>,
    #[serde(default)]
    pub aggregate: AggregateKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// The watermark trails the largest event time seen by this much.
    #[serde(default)]
    pub lateness_ms: i64,
    #[serde(default)]
    pub late: LateKind,
    /// Start at the first record at or after this event time (default: the beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<i64>,
    /// Start from the newest checkpoint of this version of the same view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from_version: Option<u32>,
    /// A checkpoint every this many records (default 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateKind {
    #[default]
    Count,
    Sum,
    Min,
    Max,
    Mean,
    /// Approximate distinct count of the value field (HyperLogLog).
    Distinct,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LateKind {
    /// Count late records and leave closed windows as they are.
    #[default]
    Drop,
    /// Count them and update the closed window anyway.
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    None,
    Tumbling,
    Hopping,
    Session,
}

/// `{ kind = "tumbling", size_ms = 10000 }`, `{ kind = "hopping", size_ms, hop_ms }`,
/// `{ kind = "session", gap_ms }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub kind: WindowKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<i64>,
}

/// `{ field = "kind", equals = "click" }`: exactly one comparison per filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
}

/// A definition error: the key inside the definition (`window.size_ms`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn err<T>(key: &str, message: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError { key: key.to_string(), message: message.into() })
}

fn path(key: &str, text: &str) -> Result<JsonPath, SpecError> {
    JsonPath::parse(text).map_err(|e| SpecError { key: key.to_string(), message: e.to_string() })
}

/// How a filter compares the field's value.
enum Comparison {
    Equals(serde_json::Value),
    NotEquals(serde_json::Value),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists(bool),
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Comparison {
    fn passes(&self, value: Option<serde_json::Value>) -> bool {
        let number = || value.as_ref().and_then(serde_json::Value::as_f64);
        match self {
            Comparison::Equals(want) => value.as_ref().is_some_and(|v| json_equal(v, want)),
            Comparison::NotEquals(want) => !value.as_ref().is_some_and(|v| json_equal(v, want)),
            Comparison::Gt(x) => number().is_some_and(|n| n > *x),
            Comparison::Gte(x) => number().is_some_and(|n| n >= *x),
            Comparison::Lt(x) => number().is_some_and(|n| n < *x),
            Comparison::Lte(x) => number().is_some_and(|n| n <= *x),
            Comparison::Exists(want) => value.is_some() == *want,
        }
    }
}

impl FilterSpec {
    fn comparison(&self) -> Result<Comparison, SpecError> {
        let mut found = Vec::new();
        if let Some(v) = &self.equals {
            found.push(Comparison::Equals(v.clone()));
        }
        if let Some(v) = &self.not_equals {
            found.push(Comparison::NotEquals(v.clone()));
        }
        for (value, make) in [
            (self.gt, Comparison::Gt as fn(f64) -> Comparison),
            (self.gte, Comparison::Gte),
            (self.lt, Comparison::Lt),
            (self.lte, Comparison::Lte),
        ] {
            if let Some(v) = value {
                if !v.is_finite() {
                    return err("filter", "a comparison needs a finite number");
                }
                found.push(make(v));
            }
        }
        if let Some(v) = self.exists {
            found.push(Comparison::Exists(v));
        }
        if found.len() != 1 {
            return err(
                "filter",
                "needs exactly one of equals, not_equals, gt, gte, lt, lte, exists",
            );
        }
        Ok(found.remove(0))
    }
}

impl ViewSpec {
    /// The revision this definition is stored under: the given one, or a hash of the definition.
    pub fn revision(&self) -> String {
        match &self.revision {
            Some(r) => r.clone(),
            None => {
                let canonical =
                    serde_json::to_vec(self).expect("a view definition serializes to JSON");
                format!("h{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
            }
        }
    }

    /// The first field that makes a view partition's state mean something else under `other`
    /// (what it reads, how it groups, windows and folds), or `None` when `other` may continue
    /// this definition's state (`start_from_version`).
    pub fn state_differs(&self, other: &ViewSpec) -> Option<&'static str> {
        [
            ("topic", self.topic == other.topic),
            ("filter", self.filter == other.filter),
            ("key_field", self.key_field == other.key_field),
            ("value_field", self.value_field == other.value_field),
            ("aggregate", self.aggregate == other.aggregate),
            ("window", self.window == other.window),
            ("lateness_ms", self.lateness_ms == other.lateness_ms),
            ("late", self.late == other.late),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(field, _)| field)
    }

    /// Checks the definition and builds the engine's `ViewDef` from it.
    pub fn to_def(&self) -> Result<ViewDef, SpecError> {
        if let Some(r) = &self.revision {
            if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return err("revision", "must be non-empty ASCII letters, digits, '.', '_' or '-'");
            }
        }
        let mut def = ViewDef::new(self.topic.clone()).revision(self.revision());
        if let Some(filter) = &self.filter {
            let field = path("filter.field", &filter.field)?;
            let comparison = filter.comparison()?;
            def = def.filter(move |r| comparison.passes(field.value(r.value()).ok()));
        }
        if let Some(key) = &self.key_field {
            let field = path("key_field", key)?;
            def = def.key_by(move |r, out| field.key_into(r.value(), out).is_ok());
        }
        let aggregate = match self.aggregate {
            AggregateKind::Count => Aggregate::Count,
            AggregateKind::Sum => Aggregate::Sum,
            AggregateKind::Min => Aggregate::Min,
            AggregateKind::Max => Aggregate::Max,
            AggregateKind::Mean => Aggregate::Mean,
            AggregateKind::Distinct => Aggregate::DistinctCount,
        };
        match &self.value_field {
            Some(value) => {
                let field = path("value_field", value)?;
                def = def.map(move |r| field.number(r.value()));
            }
            None if aggregate.needs_value() => {
                return err(
                    "value_field",
                    format!(
                        "aggregate {} needs a value_field (a JSON number field path)",
                        format!("{:?}", self.aggregate).to_lowercase()
                    ),
                );
            }
            None => {}
        }
        def = def.aggregate(aggregate).window(self.window()?);
        if self.lateness_ms < 0 {
            return err("lateness_ms", "must not be negative");
        }
        let late = match self.late {
            LateKind::Drop => LatePolicy::Drop,
            LateKind::Update => LatePolicy::Update,
        };
        def = def.lateness(self.lateness_ms, late);
        def = match (self.start_at_ms, self.start_from_version) {
            (Some(_), Some(_)) => {
                return err(
                    "start_from_version",
                    "give start_at_ms or start_from_version, not both",
                )
            }
            (Some(ts), None) => def.start(Start::Timestamp(ts)),
            (None, Some(0)) => return err("start_from_version", "versions start at 1"),
            (None, Some(version)) => def.start(Start::Checkpoint { version }),
            (None, None) => def,
        };
        if let Some(every) = self.checkpoint_every {
            if every == 0 {
                return err("checkpoint_every", "must be at least 1");
            }
            def = def.checkpoint_every(every);
        }
        // The engine's own rules, as a backstop for anything not checked above.
        def.validate().map_err(|e| SpecError { key: String::new(), message: e.to_string() })?;
        Ok(def)
    }

    fn window(&self) -> Result<Window, SpecError> {
        let Some(w) = self.window else { return Ok(Window::None) };
        let need = |value: Option<i64>, key: &str| match value {
            Some(v) if v > 0 => Ok(v),
            Some(_) => err(&format!("window.{key}"), "must be positive"),
            None => err(
                &format!("window.{key}"),
                format!("a {:?} window needs {key}", w.kind).to_lowercase(),
            ),
        };
        let forbid = |value: Option<i64>, key: &str| match value {
            Some(_) => err(
                &format!("window.{key}"),
                format!("does not apply to a {} window", format!("{:?}", w.kind).to_lowercase()),
            ),
            None => Ok(()),
        };
        match w.kind {
            WindowKind::None => {
                forbid(w.size_ms, "size_ms")?;
                forbid(w.hop_ms, "hop_ms")?;
                forbid(w.gap_ms, "gap_ms")?;
                Ok(Window::None)
            }
            WindowKind::Tumbling => {
                forbid(w.hop_ms, "hop_ms")?;
                forbid(w.gap_ms, "gap_ms")?;
                Ok(Window::Tumbling { size_ms: need(w.size_ms, "size_ms")? })
            }
            WindowKind::Hopping => {
                forbid(w.gap_ms, "gap_ms")?;
                let size_ms = need(w.size_ms, "size_ms")?;
                let hop_ms = need(w.hop_ms, "hop_ms")?;
                if size_ms / hop_ms > 64 {
                    return err("window.hop_ms", "size_ms / hop_ms must be at most 64");
                }
                Ok(Window::Hopping { size_ms, hop_ms })
            }
            WindowKind::Session => {
                forbid(w.size_ms, "size_ms")?;
                forbid(w.hop_ms, "hop_ms")?;
                Ok(Window::Session { gap_ms: need(w.gap_ms, "gap_ms")? })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ViewSpec {
        serde_json::from_str(json).expect("a valid spec")
    }

    #[test]
    fn revisions_follow_the_definition() {
        let a = spec(r#"{"topic":"t","aggregate":"sum","value_field":"v"}"#);
        let b = spec(r#"{"topic":"t","aggregate":"sum","value_field":"v"}"#);
        let c = spec(r#"{"topic":"t","aggregate":"max","value_field":"v"}"#);
        assert_eq!(a.revision(), b.revision());
        assert_ne!(a.revision(), c.revision());
        let named = spec(r#"{"topic":"t","revision":"v2"}"#);
        assert_eq!(named.revision(), "v2");
        assert!(a.to_def().is_ok());
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (r#"{"topic":"t","aggregate":"mean"}"#, "value_field"),
            (r#"{"topic":"t","window":{"kind":"tumbling"}}"#, "window.size_ms"),
            (r#"{"topic":"t","window":{"kind":"tumbling","size_ms":0}}"#, "window.size_ms"),
            (
                r#"{"topic":"t","window":{"kind":"tumbling","size_ms":5,"gap_ms":1}}"#,
                "window.gap_ms",
            ),
            (
                r#"{"topic":"t","window":{"kind":"hopping","size_ms":1000,"hop_ms":1}}"#,
                "window.hop_ms",
            ),
            (r#"{"topic":"t","window":{"kind":"session"}}"#, "window.gap_ms"),
            (r#"{"topic":"t","lateness_ms":-1}"#, "lateness_ms"),
            (r#"{"topic":"t","key_field":"a..b"}"#, "key_field"),
            (r#"{"topic":"t","filter":{"field":"k"}}"#, "filter"),
            (r#"{"topic":"t","filter":{"field":"k","gt":1,"lt":2}}"#, "filter"),
            (r#"{"topic":"t","revision":"a b"}"#, "revision"),
            (r#"{"topic":"t","start_at_ms":1,"start_from_version":1}"#, "start_from_version"),
            (r#"{"topic":"t","checkpoint_every":0}"#, "checkpoint_every"),
        ];
        for (json, key) in cases {
            let e = spec(json).to_def().err().unwrap_or_else(|| panic!("{json} was accepted"));
            assert_eq!(e.key, key, "{json}: {e}");
        }
        let unknown = serde_json::from_str::<ViewSpec>(r#"{"topic":"t","agregate":"sum"}"#);
        assert!(unknown.is_err_and(|e| e.to_string().contains("agregate")));
    }

    #[test]
    fn filters_compare_json_values() {
        let eq = FilterSpec {
            field: "k".into(),
            equals: Some(serde_json::json!(1)),
            not_equals: None,
            gt: None,
            gte: None,
            lt: None,
            lte: None,
            exists: None,
        };
        let c = eq.comparison().expect("one comparison");
        assert!(c.passes(Some(serde_json::json!(1.0))));
        assert!(!c.passes(Some(serde_json::json!("1"))));
        assert!(!c.passes(None));
        let gt = FilterSpec { equals: None, gt: Some(2.5), ..eq.clone() };
        let c = gt.comparison().expect("one comparison");
        assert!(c.passes(Some(serde_json::json!(3))));
        assert!(!c.passes(Some(serde_json::json!("3"))));
        let exists = FilterSpec { equals: None, exists: Some(false), ..eq };
        assert!(exists.comparison().expect("one").passes(None));
    }
}
