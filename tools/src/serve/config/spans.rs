//! Where a key of `kappa.toml` is: its line and column, from the document's span tree or, for
//! errors that leave none (a duplicate key, a syntax error), from the text itself.

use super::*;

/// The dotted key at `offset` read from the text itself, for errors that leave no span tree
/// (a duplicate key, a syntax error): a table header names itself, a `key = value` line its key
/// (or the one the message names in backquotes) under the last header above it.
pub(super) fn key_in_text(text: &str, offset: usize, message: &str) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[').split(']').next().unwrap_or("").trim().replace(['"', ' '], "")
        })
    };
    if let Some(table) = header(line) {
        return table;
    }
    let table = text[..line_start].lines().rev().find_map(header).unwrap_or_default();
    let named = message.split('`').nth(1).filter(|k| !k.is_empty());
    let name = named.map(str::to_string).unwrap_or_else(|| {
        line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string()
    });
    match (table.is_empty(), name.is_empty()) {
        (_, true) => table,
        (true, false) => name,
        (false, false) => format!("{table}.{name}"),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key structure of a TOML document with spans, for locating keys and naming spans.
#[derive(Debug, Default)]
pub(super) struct Spans {
    root: Vec<(String, SpanNode)>,
}

#[derive(Debug)]
struct SpanNode {
    key: Range<usize>,
    value: Range<usize>,
    children: Vec<(String, SpanNode)>,
}

impl Spans {
    pub(super) fn parse(text: &str) -> Spans {
        // A syntax error leaves no tree; serde then reports it with its own span.
        match toml::de::DeTable::parse(text) {
            Ok(table) => Spans { root: children_of_table(table.get_ref()) },
            Err(_) => Spans::default(),
        }
    }

    /// The span of the deepest existing key on `path` (the value for scalars, the key for
    /// tables); the start of the document when none exists.
    pub(super) fn locate(&self, path: &[&str]) -> Range<usize> {
        let mut nodes = &self.root;
        let mut last: Option<&SpanNode> = None;
        for (depth, segment) in path.iter().enumerate() {
            match nodes.iter().find(|(k, _)| k == segment) {
                Some((_, node)) => {
                    last = Some(node);
                    nodes = &node.children;
                }
                // A missing key: point at the table that lacks it (an inline table's braces, or
                // a table's header).
                None => {
                    return match last {
                        Some(node) if node.value.start > node.key.start && depth > 0 => {
                            node.value.clone()
                        }
                        Some(node) => node.key.clone(),
                        None => 0..0,
                    }
                }
            }
        }
        match last {
            Some(node) if node.children.is_empty() => node.value.clone(),
            Some(node) => node.key.clone(),
            None => 0..0,
        }
    }

    /// The dotted path of the deepest key whose key or value span holds `offset` (a table's
    /// span may be only its header, so children are searched even when the parent misses).
    pub(super) fn key_at(&self, offset: usize) -> String {
        fn search(nodes: &[(String, SpanNode)], offset: usize) -> Option<Vec<String>> {
            let holds = |r: &Range<usize>| r.start <= offset && offset < r.end.max(r.start + 1);
            for (name, node) in nodes {
                if let Some(mut deeper) = search(&node.children, offset) {
                    deeper.insert(0, name.clone());
                    return Some(deeper);
                }
                if holds(&node.key) || holds(&node.value) {
                    return Some(vec![name.clone()]);
                }
            }
            None
        }
        search(&self.root, offset).unwrap_or_default().join(".")
    }
}

fn children_of_table(table: &toml::de::DeTable<'_>) -> Vec<(String, SpanNode)> {
    table.iter().map(|(k, v)| (k.get_ref().to_string(), node(k.span(), v))).collect()
}

fn node(key: Range<usize>, value: &toml::Spanned<toml::de::DeValue<'_>>) -> SpanNode {
    let children = match value.get_ref() {
        toml::de::DeValue::Table(t) => children_of_table(t),
        toml::de::DeValue::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (i.to_string(), node(item.span(), item)))
            .collect(),
        _ => Vec::new(),
    };
    SpanNode { key, value: value.span(), children }
}
