//! JSON field extraction for view pipelines: a parsed field path (`a.b.c`, `items.0.v`) read out of
//! a record's value without building a document, without allocation, and with the cause when it
//! finds nothing (no such field, not a number, not JSON).
//!
//! Why it exists: views (and the appliance's config-declared views) aggregate over, and group by,
//! JSON fields. The first version scanned text for `"field":`, which read a nested field of the
//! same name, gave up at a string value, and so silently skipped records (issue 9). This is a real
//! parser: `JsonPath` walks the document with a serde `DeserializeSeed`, skipping (and validating)
//! the values the path does not name, comparing keys after unescaping, and parsing only the value
//! at the end of the path.
//!
//! Why serde_json's deserializer (with `float_roundtrip`, so numbers are correctly rounded): it
//! allocates nothing unless a key or the wanted string holds an escape, it validates the whole
//! document, it is already a dependency, and it measured cheapest (`benches/json.rs`, this 2-core
//! VM): 0.27 us per 100 B record, 0.44 us per nested 200 B record, 0.33 us per 1 KiB record with
//! the field last. The same walk over sonic-rs's deserializer took 1.20-1.43x as long (medians of
//! 41 paired rounds); sonic-rs's lazy `get_from_slice` took 0.75-1.9x as long and allocates a
//! 128-byte key buffer per call (one allocation per record on the fold path); building a
//! `serde_json::Value` took 2.8-3.7x. simd-json needs a mutable copy of every record.
//!
//! Rules (docs/semantics.md): the document is validated in full (trailing bytes too), so a
//! malformed record is `NotJson`, never half-read; a key that appears twice counts at its last
//! occurrence (as in `JSON.parse`); a path segment of digits indexes an array when the value there
//! is an array and names a key when it is an object; numbers become the nearest `f64`.

use std::fmt;
use std::io::Write;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a record gave no value (counted per cause in a view's progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The path names nothing in this document.
    NoField,
    /// The path names a string, boolean, null, object or array, not a number.
    NotANumber,
    /// The value is not a well-formed JSON document.
    NotJson,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::NoField => "no such field",
            Skip::NotANumber => "not a number",
            Skip::NotJson => "not JSON",
        })
    }
}

/// A bad path: empty, or with an empty segment (`a..b`, `.a`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

/// A field path into JSON documents, parsed once (at view definition) and used per record.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Box<str>>,
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPath({:?})", self.text)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for JsonPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        JsonPath::parse(s)
    }
}

impl JsonPath {
    /// Parses `a.b.c`: keys separated by dots. `\.` is a dot inside a key and `\\` a
    /// backslash (`from_segments` takes keys as they are).
    pub fn parse(path: &str) -> Result<JsonPath, PathError> {
        let bad = |reason| Err(PathError { path: path.to_string(), reason });
        if path.is_empty() {
            return bad("the path is empty");
        }
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('.' | '\\')) => current.push(escaped),
                    _ => return bad("a backslash escapes only a dot or a backslash (\\. or \\\\)"),
                },
                '.' if current.is_empty() => {
                    return bad("a segment is empty (two dots in a row, or a leading dot)")
                }
                '.' => segments.push(Box::from(std::mem::take(&mut current))),
                c => current.push(c),
            }
        }
        if current.is_empty() {
            return bad("a segment is empty (a trailing dot)");
        }
        segments.push(Box::from(current));
        Ok(JsonPath { text: path.to_string(), segments })
    }

    /// A path from its segments, for keys that contain dots.
    pub fn from_segments<S: AsRef<str>>(segments: &[S]) -> Result<JsonPath, PathError> {
        let text = segments.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".");
        if segments.is_empty() {
            return Err(PathError { path: text, reason: "the path is empty" });
        }
        Ok(JsonPath { text, segments: segments.iter().map(|s| Box::from(s.as_ref())).collect() })
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|s| &**s)
    }

    /// The number at this path in `json`. Allocation-free unless a key holds an escape.
    pub fn number(&self, json: &[u8]) -> Result<f64, Skip> {
        number_at(&self.segments, json)
    }

    /// The value at this path as a grouping key, written into `out` (cleared first): a string's
    /// unescaped bytes, a number as Rust prints its `f64` (`12`, `12.5`, `1e300`... integers
    /// without a fraction print as integers), `true`/`false`. Null, objects and arrays give
    /// `NotANumber` (no key), as does nothing at all (`NoField`).
    pub fn key_into(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), Skip> {
        out.clear();
        let mut de = serde_json::Deserializer::from_slice(json);
        let found = Level { path: &self.segments, leaf: Leaf::Key(out) }
            .deserialize(&mut de)
            .map_err(|_| Skip::NotJson)?;
        de.end().map_err(|_| Skip::NotJson)?;
        match found {
            Found::Value(_) | Found::Text => Ok(()),
            Found::Other => {
                out.clear();
                Err(Skip::NotANumber)
            }
            Found::Missing => Err(Skip::NoField),
        }
    }

    /// The number at this path, read through any serde deserializer (the benchmark compares
    /// serde_json with sonic-rs through this). Does not check for trailing bytes.
    pub fn number_from<'de, D: de::Deserializer<'de>>(
        &self,
        deserializer: D,
    ) -> Result<Result<f64, Skip>, D::Error> {
        let found = Level { path: &self.segments, leaf: Leaf::Number }.deserialize(deserializer)?;
        Ok(found.number())
    }
}

impl JsonPath {
    /// The value at this path as a `serde_json::Value` (strings, numbers, booleans, null,
    /// objects, arrays), for comparisons in filters declared as data. Allocates the value; the
    /// fold path uses `number` and `key_into`.
    pub fn value(&self, json: &[u8]) -> Result<serde_json::Value, Skip> {
        let mut out = None;
        let mut de = serde_json::Deserializer::from_slice(json);
        let found = Level { path: &self.segments, leaf: Leaf::Value(&mut out) }
            .deserialize(&mut de)
            .map_err(|_| Skip::NotJson)?;
        de.end().map_err(|_| Skip::NotJson)?;
        match (found, out) {
            (Found::Missing, _) | (_, None) => Err(Skip::NoField),
            (_, Some(value)) => Ok(value),
        }
    }
}

/// `JsonPath::parse(path)?.number(json)` without keeping the path, for ad hoc use (a view's map
/// closure should hold a parsed `JsonPath`, or use `ViewDef::map_json`). `None` for any skip, or
/// a path deeper than 16 segments. No allocation.
pub fn json_number(json: &[u8], path: &str) -> Option<f64> {
    let mut segments = [""; 16];
    let mut depth = 0;
    for segment in path.split('.') {
        if depth == segments.len() || segment.is_empty() {
            return None;
        }
        segments[depth] = segment;
        depth += 1;
    }
    number_at(&segments[..depth], json).ok()
}

fn number_at<S: AsRef<str>>(path: &[S], json: &[u8]) -> Result<f64, Skip> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let found =
        Level { path, leaf: Leaf::Number }.deserialize(&mut de).map_err(|_| Skip::NotJson)?;
    de.end().map_err(|_| Skip::NotJson)?;
    found.number()
}

/// What one level of the walk found.
enum Found {
    /// A number at the end of the path.
    Value(f64),
    /// A string or scalar written into the key buffer.
    Text,
    /// Something at the end of the path that is not a number (or not a key).
    Other,
    /// Nothing at this path.
    Missing,
}

impl Found {
    fn number(self) -> Result<f64, Skip> {
        match self {
            Found::Value(v) => Ok(v),
            Found::Text | Found::Other => Err(Skip::NotANumber),
            Found::Missing => Err(Skip::NoField),
        }
    }
}

/// What to do with the value at the end of the path.
enum Leaf<'a> {
    Number,
    Key(&'a mut Vec<u8>),
    /// The whole value, whatever its type.
    Value(&'a mut Option<serde_json::Value>),
}

impl Leaf<'_> {
    fn reborrow(&mut self) -> Leaf<'_> {
        match self {
            Leaf::Number => Leaf::Number,
            Leaf::Key(out) => Leaf::Key(out),
            Leaf::Value(out) => Leaf::Value(out),
        }
    }
}

/// The walk at one depth: `path` is what remains below this value.
struct Level<'p, 'a, S> {
    path: &'p [S],
    leaf: Leaf<'a>,
}

impl<'de, S: AsRef<str>> DeserializeSeed<'de> for Level<'_, '_, S> {
    type Value = Found;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Found, D::Error> {
        match self.leaf {
            // The end of the path, wanted whole: let serde_json build it.
            Leaf::Value(out) if self.path.is_empty() => {
                *out = Some(<serde_json::Value as serde::Deserialize>::deserialize(deserializer)?);
                Ok(Found::Text)
            }
            leaf => deserializer.deserialize_any(Level { path: self.path, leaf }),
        }
    }
}

impl<S: AsRef<str>> Level<'_, '_, S> {
    fn scalar(self, text: impl FnOnce(&mut Vec<u8>)) -> Found {
        match (self.path.is_empty(), self.leaf) {
            (false, _) => Found::Missing,
            (true, Leaf::Number | Leaf::Value(_)) => Found::Other,
            (true, Leaf::Key(out)) => {
                out.clear();
                text(out);
                Found::Text
            }
        }
    }

    fn number(self, value: f64, text: impl FnOnce(&mut Vec<u8>)) -> Found {
        match (self.path.is_empty(), self.leaf) {
            (false, _) => Found::Missing,
            (true, Leaf::Number | Leaf::Value(_)) => Found::Value(value),
            (true, Leaf::Key(out)) => {
                out.clear();
                text(out);
                Found::Value(value)
            }
        }
    }
}

impl<'de, S: AsRef<str>> Visitor<'de> for Level<'_, '_, S> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Found, E> {
        Ok(self.scalar(|out| out.extend_from_slice(if v { b"true" } else { b"false" })))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Found, E> {
        // Writing into a Vec cannot fail.
        Ok(self.number(v as f64, |out| {
            let _ = write!(out, "{v}");
        }))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Found, E> {
        Ok(self.number(v as f64, |out| {
            let _ = write!(out, "{v}");
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Found, E> {
        Ok(self.number(v, |out| {
            let _ = write!(out, "{v}");
        }))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Found, E> {
        Ok(self.scalar(|out| out.extend_from_slice(v.as_bytes())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(if self.path.is_empty() { Found::Other } else { Found::Missing })
    }

    fn visit_none<E: de::Error>(self) -> Result<Found, E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Found, A::Error> {
        let Some((want, below)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Found::Other);
        };
        let mut found = Found::Missing;
        while let Some(hit) = map.next_key_seed(KeyIs(want.as_ref()))? {
            if hit {
                // The last occurrence of a repeated key wins.
                found = map.next_value_seed(Level { path: below, leaf: self.leaf.reborrow() })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Found, A::Error> {
        let index = match self.path.split_first() {
            Some((want, _)) => want.as_ref().parse::<usize>().ok(),
            None => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(Found::Other);
            }
        };
        let below = &self.path[1..];
        let mut found = Found::Missing;
        let mut at = 0usize;
        loop {
            if Some(at) == index {
                match seq.next_element_seed(Level { path: below, leaf: self.leaf.reborrow() })? {
                    Some(f) => found = f,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(found)
    }
}

/// Deserializes an object key and says whether it equals the wanted segment (after unescaping).
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests;
