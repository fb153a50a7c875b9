//! JSON field paths (`a.b.c`) for view definitions written as data (the config file, HTTP).
//!
//! PLACEHOLDER ADAPTER: the views-correctness work replaces `operator::json_number` with a real
//! field-path API in the engine; when it lands, `FieldPath` becomes a thin wrapper over it (or
//! disappears) and nothing else in the appliance changes. Until then this reads values with
//! serde_json, a real JSON parser, so nested objects, escaped keys and strings that contain a
//! field's name are handled correctly (unlike a text search). It walks the document lazily with a
//! `DeserializeSeed`: fields off the path are skipped (`IgnoredAny`) and only the value at the end
//! of the path is materialized, so a record costs one pass over its bytes and no allocation for
//! the parts it does not use.
//!
//! Path syntax: segments separated by `.`; `\.` and `\\` escape a dot or backslash inside a field
//! name; a segment of digits also indexes into an array (`readings.0.temp`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    /// Parses `a.b.c`; an error says what is wrong with the path.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('.' | '\\')) => current.push(escaped),
                    _ => return Err(format!("bad escape in field path {text:?}: use \\. or \\\\")),
                },
                '.' => {
                    if current.is_empty() {
                        return Err(format!("empty segment in field path {text:?}"));
                    }
                    segments.push(std::mem::take(&mut current));
                }
                c => current.push(c),
            }
        }
        if current.is_empty() {
            return Err(format!("empty segment in field path {text:?}"));
        }
        segments.push(current);
        Ok(FieldPath { text: text.to_string(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at the path, if the record is valid JSON and has one.
    pub fn value(&self, json: &[u8]) -> Option<serde_json::Value> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let found = Walk { rest: &self.segments }.deserialize(&mut de).ok()?;
        de.end().ok()?;
        found
    }

    /// The JSON number at the path (strings are not converted: `"12"` is not a number).
    pub fn number(&self, json: &[u8]) -> Option<f64> {
        match self.value(json)? {
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// Writes the value at the path as a grouping key: a string's UTF-8 bytes (unescaped), or the
    /// JSON text of a number or boolean. `false` (skip the record) for null, objects, arrays and
    /// missing fields.
    pub fn key_into(&self, json: &[u8], out: &mut Vec<u8>) -> bool {
        match self.value(json) {
            Some(serde_json::Value::String(s)) => out.extend_from_slice(s.as_bytes()),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                out.extend_from_slice(v.to_string().as_bytes())
            }
            _ => return false,
        }
        true
    }
}

/// Follows the remaining segments; `Ok(None)` when the path does not exist in this document.
struct Walk<'p> {
    rest: &'p [String],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.rest.split_first() {
            None => serde::Deserialize::deserialize(d).map(Some),
            Some((head, tail)) => d.deserialize_any(Step { head, tail }),
        }
    }
}

struct Step<'p> {
    head: &'p str,
    tail: &'p [String],
}

/// Compares an object key with the wanted segment, borrowing the key where the input allows.
struct KeyIs<'p>(&'p str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.head))? {
            if matches {
                // A later duplicate key wins, as in serde_json's own `Value`.
                found = map.next_value_seed(Walk { rest: self.tail })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted: Option<usize> = self.head.parse().ok();
        let mut found = None;
        let mut index = 0usize;
        loop {
            if Some(index) == wanted {
                match seq.next_element_seed(Walk { rest: self.tail })? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }

    // A scalar where the path wants an object: the path does not exist here.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::FieldPath;

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).expect("valid path")
    }

    #[test]
    fn nested_fields_arrays_and_types() {
        let doc = br#"{"sensor":{"id":"s-1","loc":{"x":1.5}},"readings":[{"t":20},{"t":21.5}],"ok":true}"#;
        assert_eq!(path("sensor.loc.x").number(doc), Some(1.5));
        assert_eq!(path("readings.1.t").number(doc), Some(21.5));
        assert_eq!(path("readings.2.t").number(doc), None);
        assert_eq!(path("sensor.id").number(doc), None, "a string is not a number");
        assert_eq!(path("sensor.missing").number(doc), None);
        assert_eq!(path("sensor.id.deeper").number(doc), None);
        let mut key = Vec::new();
        assert!(path("sensor.id").key_into(doc, &mut key));
        assert_eq!(key, b"s-1");
        key.clear();
        assert!(path("ok").key_into(doc, &mut key));
        assert_eq!(key, b"true");
        key.clear();
        assert!(path("readings.0.t").key_into(doc, &mut key));
        assert_eq!(key, b"20");
        key.clear();
        assert!(!path("sensor").key_into(doc, &mut key), "an object is no key");
    }

    #[test]
    fn escapes_and_names_inside_strings_do_not_fool_it() {
        // The field name appears inside a string value before the real field.
        let doc = br#"{"note":"\"temp\": 99","temp":3}"#;
        assert_eq!(path("temp").number(doc), Some(3.0));
        // Escaped characters in keys and values.
        let doc = br#"{"a\"b":{"c":7},"k\u00e9y":"v\u00e9\n"}"#;
        assert_eq!(path("a\"b.c").number(doc), Some(7.0));
        let mut key = Vec::new();
        assert!(path("kéy").key_into(doc, &mut key));
        assert_eq!(key, "vé\n".as_bytes());
        // A dot inside a field name.
        let doc = br#"{"a.b":1,"a":{"b":2}}"#;
        assert_eq!(path(r"a\.b").number(doc), Some(1.0));
        assert_eq!(path("a.b").number(doc), Some(2.0));
        // The same name nested elsewhere does not match a top-level path.
        let doc = br#"{"x":{"temp":5}}"#;
        assert_eq!(path("temp").number(doc), None);
    }

    #[test]
    fn duplicates_invalid_json_and_bad_paths() {
        assert_eq!(path("v").number(br#"{"v":1,"v":2}"#), Some(2.0), "the last one wins");
        assert_eq!(path("v").number(br#"{"v":1"#), None, "truncated");
        assert_eq!(path("v").number(br#"{"v":1} trailing"#), None);
        assert_eq!(path("v").number(b"not json"), None);
        assert_eq!(path("v").number(br#"{"v":-3.5e2}"#), Some(-350.0));
        assert_eq!(path("v").number(br#"{"v":null}"#), None);
        assert!(FieldPath::parse("").is_err());
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("a.").is_err());
        assert!(FieldPath::parse(r"a\x").is_err());
    }
}
