//! JSON field extraction for view pipelines: a parsed field path (`a.b.c`, `items.0.v`) read out of
//! a record's value without building a document, without allocation, and with the cause when it
//! finds nothing (no such field, not a number, not JSON).
//!
//! Why it exists: views (and the appliance's config-declared views) aggregate over, and group by,
//! JSON fields. The first version scanned text for `"field":`, which read a nested field of the
//! same name, gave up at a string value, and so silently skipped records (issue 9). This is a real
//! parser: `JsonPath` walks the document with a serde `DeserializeSeed`, validating the values the
//! path does not name without building them (`Valid`), comparing keys after unescaping, and
//! parsing the value at the end of the path.
//!
//! Why serde_json's deserializer (with `float_roundtrip`, so numbers are correctly rounded): it
//! allocates nothing unless a key or the wanted string holds an escape, it validates the whole
//! document, it is already a dependency, and it measured cheapest (`benches/json.rs`, this 2-core
//! VM): 0.27 us per 100 B record, 0.44 us per nested 200 B record, 0.33 us per 1 KiB record with
//! the field last; with every skipped value validated too (UTF-8, escapes, number range), 0.23,
//! 0.45 and 0.46 us (a later run, not paired with the first). The same walk over sonic-rs's deserializer took 1.20-1.43x as long (medians of
//! 41 paired rounds); sonic-rs's lazy `get_from_slice` took 0.75-1.9x as long and allocates a
//! 128-byte key buffer per call (one allocation per record on the fold path); building a
//! `serde_json::Value` took 2.8-3.7x. simd-json needs a mutable copy of every record.
//!
//! Rules (docs/semantics.md): the document is validated in full, as `serde_json::Value` would
//! judge it (syntax, trailing bytes, UTF-8, escapes including surrogate pairs, every number within
//! the `f64` range), wherever the damage is, so whether a record is JSON does not depend on the
//! path read; a malformed record is `NotJson`, never half-read. Why in full: two views reading
//! two fields of one record must agree on whether it is JSON, and a document another consumer
//! (or `serde_json::Value`) refuses must not be counted as good here. The cost: skipped numbers
//! are parsed and skipped strings checked in place (UTF-8), and a skipped string holding an
//! escape is decoded into serde_json's scratch buffer (one allocation per record that has one;
//! documents without escapes stay allocation-free, `tests/alloc.rs`). Its per-record time in
//! `benches/json.rs` (the nested document has an escaped string) is still to be measured on a
//! quiet machine. A key that appears twice counts at its last occurrence (as
//! in `JSON.parse`); a path segment of digits indexes an array when the value there is an array
//! and names a key when it is an object; numbers become the nearest `f64`; as a key, an integer
//! keeps its digits (read from the document's text, so integers past 64 bits stay distinct).

use std::fmt;
use std::io::Write;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

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

    /// The number at this path in `json`. Allocation-free unless a string or key holds an
    /// escape.
    pub fn number(&self, json: &[u8]) -> Result<f64, Skip> {
        number_at(&self.segments, json)
    }

    /// The value at this path as a grouping key, written into `out` (cleared first): a string's
    /// unescaped bytes; an integer written without fraction or exponent, its digits as written
    /// (`12`, `-3`, `18446744073709551617`); any other number the shortest digits that read back
    /// as the same `f64`, in plain notation from `1e-6` up to below `1e21` (`12.5`, `12` for
    /// `12.0`, `0.000001`) and in exponent notation outside it (`1e21`, `1.5e300`, `1e-7`), as
    /// JavaScript's `Number#toString` but without `+` in the exponent; `true`/`false`. Null,
    /// objects and arrays give `NotANumber` (no key), nothing at all `NoField`, a malformed
    /// document `NotJson`.
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
/// a path deeper than 16 segments. No allocation unless a string or key holds an escape.
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
            // The end of the path, wanted as a key: an integer keeps the digits of the text
            // (serde_json reads integers past 64 bits as `f64`, which would merge distinct keys),
            // so take the value's text (borrowed, no allocation) and read it from there.
            Leaf::Key(out) if self.path.is_empty() => {
                let raw = <&serde_json::value::RawValue>::deserialize(deserializer)?;
                let text = raw.get();
                let mut de = serde_json::Deserializer::from_str(text);
                let found = de::Deserializer::deserialize_any(
                    &mut de,
                    Level { path: self.path, leaf: Leaf::Key(&mut *out) },
                )
                .map_err(de::Error::custom)?;
                if matches!(found, Found::Value(_)) && is_integer_literal(text) {
                    out.clear();
                    out.extend_from_slice(text.as_bytes());
                }
                Ok(found)
            }
            leaf => deserializer.deserialize_any(Level { path: self.path, leaf }),
        }
    }
}

/// `-?[0-9]+`: a JSON number written without fraction or exponent.
fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A non-integer number as a key: the shortest digits that read back as `v`, in plain notation
/// for `1e-6 <= |v| < 1e21` and exponent notation outside (the ranges of JavaScript's
/// `Number#toString`). The bounds compare the `f64` itself, which is exact: the shortest digits of
/// a value below `1e21` never read back as `1e21` or more, and likewise at `1e-6`.
fn write_float_key(out: &mut Vec<u8>, v: f64) {
    let magnitude = v.abs();
    // Writing into a Vec cannot fail.
    let _ = if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        write!(out, "{v:e}")
    } else {
        write!(out, "{v}")
    };
}

/// A value the walk passes over, validated as `serde_json::Value` would validate it (UTF-8,
/// escapes, numbers within the `f64` range) without building it: strings without escapes are
/// checked in place, numbers parsed and dropped.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Valid, D::Error> {
        deserializer.deserialize_any(Valid)
    }
}

impl<'de> Visitor<'de> for Valid {
    type Value = Valid;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
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
        Ok(self.number(v, |out| write_float_key(out, v)))
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
            while map.next_entry::<Valid, Valid>()?.is_some() {}
            return Ok(Found::Other);
        };
        let mut found = Found::Missing;
        while let Some(hit) = map.next_key_seed(KeyIs(want.as_ref()))? {
            if hit {
                // The last occurrence of a repeated key wins.
                found = map.next_value_seed(Level { path: below, leaf: self.leaf.reborrow() })?;
            } else {
                map.next_value::<Valid>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Found, A::Error> {
        let index = match self.path.split_first() {
            Some((want, _)) => want.as_ref().parse::<usize>().ok(),
            None => {
                while seq.next_element::<Valid>()?.is_some() {}
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
            } else if seq.next_element::<Valid>()?.is_none() {
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
