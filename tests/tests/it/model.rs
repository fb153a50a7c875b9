//! The reference model of `docs/semantics.md`: what a view must hold, computed in plain Rust over
//! the records of each partition in offset order. It is written from the page, not from the
//! engine: no engine operator, window, state or JSON code is used (values are read with
//! serde_json, windows enumerated by brute force in `i128`, sessions kept as a plain `Vec`, the
//! HyperLogLog re-implemented from the page's formula). The property tests (`props.rs`) compare
//! its rows and counters with the engine's.

use std::collections::BTreeMap;

/// The event-time range of section 1 (restated here on purpose, not imported).
pub const EVENT_TIME_MIN: i64 = -(1 << 62);
pub const EVENT_TIME_MAX: i64 = 1 << 62;

/// One record of a partition, as read back from the log.
#[derive(Debug, Clone)]
pub struct Rec {
    pub ts: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Win {
    None,
    Tumbling(i64),
    Hopping(i64, i64),
    Session(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    Distinct,
}

/// How the view keys records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The record key.
    Record,
    /// The JSON field `g` (`key_by_json("g")`).
    JsonG,
    /// `t<event time div 1000>`, a key computed from the record (`key_by` closure).
    TimeBucket,
}

/// A view definition, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub window: Win,
    pub agg: Agg,
    pub key: KeyKind,
    /// `map_json("v")` (always for aggregates other than count).
    pub map_v: bool,
    /// The filter `value.len() % 5 != 0`.
    pub filter: bool,
    pub lateness: i64,
    pub drop_late: bool,
}

/// The counters of section 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub consumed: u64,
    pub applied: u64,
    pub time_out_of_range: u64,
    pub filtered: u64,
    pub no_key: u64,
    pub no_field: u64,
    pub not_a_number: u64,
    pub not_json: u64,
    pub late_dropped: u64,
    pub late_updated: u64,
}

/// A row: (key, start) -> end and the values folded, in fold order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub end: i64,
    pub values: Vec<f64>,
}

pub type Rows = BTreeMap<(Vec<u8>, i64), Group>;

/// A partition's sessions of one key: (start, end, values), unordered.
type Sessions = Vec<(i64, i64, Vec<f64>)>;

/// The filter the property tests give views that have one.
pub fn keeps(value: &[u8]) -> bool {
    !value.len().is_multiple_of(5)
}

/// The key `KeyKind::TimeBucket` computes.
pub fn time_bucket(ts: i64) -> Vec<u8> {
    format!("t{}", ts.div_euclid(1000)).into_bytes()
}

enum Value {
    Number(f64),
    NoField,
    NotANumber,
    NotJson,
}

fn field(doc: &[u8], name: &str) -> Value {
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return Value::NotJson;
    };
    match parsed.get(name) {
        None => Value::NoField,
        Some(serde_json::Value::Number(n)) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Some(_) => Value::NotANumber,
    }
}

/// Section 7: a key from a JSON field; `Err(())` when the document is not JSON, `Ok(None)` when
/// it has no key there.
fn json_key(doc: &[u8], name: &str) -> Result<Option<Vec<u8>>, ()> {
    let parsed = serde_json::from_slice::<serde_json::Value>(doc).map_err(|_| ())?;
    Ok(match parsed.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.as_bytes().to_vec()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string().into_bytes()),
        Some(serde_json::Value::Number(n)) => Some(
            if let Some(u) = n.as_u64() {
                u.to_string()
            } else if let Some(i) = n.as_i64() {
                i.to_string()
            } else {
                // Shortest digits; exponent notation outside [1e-6, 1e21).
                let f = n.as_f64().expect("a finite number");
                if f != 0.0 && (f.abs() < 1e-6 || f.abs() >= 1e21) {
                    format!("{f:e}")
                } else {
                    f.to_string()
                }
            }
            .into_bytes(),
        ),
        _ => None,
    })
}

/// Section 2: every fixed window holding `t`, by brute force over candidate `k`s.
fn windows(window: Win, t: i64) -> Vec<(i64, i64)> {
    let t = i128::from(t);
    let floor = |a: i128, b: i128| a.div_euclid(b);
    match window {
        Win::None => vec![(i64::MIN, i64::MAX)],
        Win::Tumbling(size) => {
            let size = i128::from(size);
            let start = floor(t, size) * size;
            vec![(start as i64, (start + size) as i64)]
        }
        Win::Hopping(size, hop) => {
            let (size, hop) = (i128::from(size), i128::from(hop));
            (floor(t - size, hop) - 1..=floor(t, hop) + 1)
                .map(|k| (k * hop, k * hop + size))
                .filter(|(s, e)| *s <= t && t < *e)
                .map(|(s, e)| (s as i64, e as i64))
                .collect()
        }
        Win::Session(_) => unreachable!("sessions are not fixed windows"),
    }
}

/// One partition's view: its rows and counters.
pub fn partition(spec: &Spec, records: &[Rec]) -> (Rows, Counts) {
    let mut counts = Counts::default();
    let mut max_t = i64::MIN;
    let mut fixed: Rows = BTreeMap::new();
    let mut sessions: BTreeMap<Vec<u8>, Sessions> = BTreeMap::new();
    for r in records {
        counts.consumed += 1;
        if r.ts < EVENT_TIME_MIN || r.ts > EVENT_TIME_MAX {
            counts.time_out_of_range += 1;
            continue;
        }
        max_t = max_t.max(r.ts);
        let watermark = max_t.saturating_sub(spec.lateness);
        if spec.filter && !keeps(&r.value) {
            counts.filtered += 1;
            continue;
        }
        let key = match spec.key {
            KeyKind::Record => r.key.clone(),
            KeyKind::JsonG => match json_key(&r.value, "g") {
                Ok(key) => key,
                Err(()) => {
                    counts.not_json += 1;
                    continue;
                }
            },
            KeyKind::TimeBucket => Some(time_bucket(r.ts)),
        };
        let Some(key) = key else {
            counts.no_key += 1;
            continue;
        };
        let value = if spec.map_v {
            match field(&r.value, "v") {
                Value::Number(v) => v,
                Value::NoField => {
                    counts.no_field += 1;
                    continue;
                }
                Value::NotANumber => {
                    counts.not_a_number += 1;
                    continue;
                }
                Value::NotJson => {
                    counts.not_json += 1;
                    continue;
                }
            }
        } else {
            0.0
        };
        counts.applied += 1;
        if let Win::Session(gap) = spec.window {
            let list = sessions.entry(key).or_default();
            let (t, t_end) = (r.ts, r.ts + gap);
            let overlapping: Vec<usize> =
                (0..list.len()).filter(|i| list[*i].0 < t_end && list[*i].1 > t).collect();
            let merged_end = overlapping.iter().map(|i| list[*i].1).fold(t_end, i64::max);
            if merged_end <= watermark {
                if spec.drop_late {
                    counts.late_dropped += 1;
                    continue;
                }
                counts.late_updated += 1;
            }
            let mut start = t;
            let mut values = Vec::new();
            let mut taken: Sessions = Vec::new();
            for i in overlapping.into_iter().rev() {
                taken.push(list.remove(i));
            }
            taken.sort_by_key(|s| s.0);
            for (s, _, v) in taken {
                start = start.min(s);
                values.extend(v);
            }
            values.push(value);
            list.push((start, merged_end, values));
        } else {
            for (start, end) in windows(spec.window, r.ts) {
                if end <= watermark {
                    if spec.drop_late {
                        counts.late_dropped += 1;
                        continue;
                    }
                    counts.late_updated += 1;
                }
                fixed
                    .entry((key.clone(), start))
                    .or_insert_with(|| Group { end, values: Vec::new() })
                    .values
                    .push(value);
            }
        }
    }
    if matches!(spec.window, Win::Session(_)) {
        for (key, list) in sessions {
            for (start, end, values) in list {
                fixed.insert((key.clone(), start), Group { end, values });
            }
        }
    }
    (fixed, counts)
}

/// Section 5: partitions' rows merged (same fixed window; overlapping sessions of a key).
pub fn merge(spec: &Spec, parts: Vec<Rows>) -> Rows {
    let mut merged: Rows = BTreeMap::new();
    if let Win::Session(_) = spec.window {
        let mut by_key: BTreeMap<Vec<u8>, Vec<(i64, Group)>> = BTreeMap::new();
        for part in parts {
            for ((key, start), group) in part {
                by_key.entry(key).or_default().push((start, group));
            }
        }
        for (key, mut list) in by_key {
            list.sort_by_key(|(start, _)| *start);
            let mut current: Option<(i64, Group)> = None;
            for (start, group) in list {
                match &mut current {
                    Some((_, open)) if start < open.end => {
                        open.end = open.end.max(group.end);
                        open.values.extend(group.values);
                    }
                    _ => {
                        if let Some((s, done)) = current.replace((start, group)) {
                            merged.insert((key.clone(), s), done);
                        }
                    }
                }
            }
            if let Some((s, done)) = current {
                merged.insert((key, s), done);
            }
        }
        return merged;
    }
    for part in parts {
        for (slot, group) in part {
            let entry =
                merged.entry(slot).or_insert_with(|| Group { end: group.end, values: Vec::new() });
            entry.values.extend(group.values);
        }
    }
    merged
}

/// Section 4: the aggregate's result over a row's values, and HyperLogLog registers for distinct.
pub fn result(agg: Agg, values: &[f64]) -> (f64, Option<Vec<u8>>) {
    match agg {
        Agg::Count => (values.len() as f64, None),
        Agg::Sum => (exact_sum(values), None),
        // A total order on numbers: NaN never counts, -0.0 is below +0.0.
        Agg::Min => (
            values
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .min_by(f64::total_cmp)
                .unwrap_or(f64::INFINITY),
            None,
        ),
        Agg::Max => (
            values
                .iter()
                .copied()
                .filter(|v| !v.is_nan())
                .max_by(f64::total_cmp)
                .unwrap_or(f64::NEG_INFINITY),
            None,
        ),
        Agg::Mean => (exact_sum(values) / values.len() as f64, None),
        Agg::Distinct => {
            let mut registers = vec![0u8; 1024];
            for v in values {
                let h = xxhash_rust::xxh3::xxh3_64(&v.to_bits().to_le_bytes());
                let index = (h >> 54) as usize;
                let rank = ((h << 10) | (1 << 9)).leading_zeros() as u8 + 1;
                registers[index] = registers[index].max(rank);
            }
            let m = 1024f64;
            let sum: f64 = registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
            let estimate = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
            let zeros = registers.iter().filter(|r| **r == 0).count();
            let estimate = if estimate <= 2.5 * m && zeros > 0 {
                m * (m / zeros as f64).ln()
            } else {
                estimate
            };
            (estimate, Some(registers))
        }
    }
}

/// Section 4: the exact sum of the values, rounded once to the nearest `f64` (ties to even): NaN
/// if a NaN or both infinities were added, else an infinity that was added, else the rounded
/// finite sum (`+0.0` when it is exactly zero).
///
/// Computed without the engine's code and by another route: every finite `f64` is an integer
/// number of 2^-1074 units, summed here in plain big integers (positive and negative parts
/// apart); the result `N / 2^1074` is written out in decimal (`N * 5^1074` with the point 1074
/// digits from the right) and handed to Rust's float parser, which rounds correctly.
pub fn exact_sum(values: &[f64]) -> f64 {
    let (mut nan, mut pos_inf, mut neg_inf) = (false, false, false);
    let mut positive: Vec<u32> = Vec::new();
    let mut negative: Vec<u32> = Vec::new();
    for v in values {
        if v.is_nan() {
            nan = true;
        } else if *v == f64::INFINITY {
            pos_inf = true;
        } else if *v == f64::NEG_INFINITY {
            neg_inf = true;
        } else {
            let bits = v.to_bits();
            let exponent = (bits >> 52) & 0x7ff;
            let fraction = bits & ((1 << 52) - 1);
            let (mantissa, shift) =
                if exponent == 0 { (fraction, 0) } else { (fraction | (1 << 52), exponent - 1) };
            let target = if bits >> 63 == 1 { &mut negative } else { &mut positive };
            big_add_shifted(target, mantissa, shift as usize);
        }
    }
    if nan || (pos_inf && neg_inf) {
        return f64::NAN;
    }
    if pos_inf {
        return f64::INFINITY;
    }
    if neg_inf {
        return f64::NEG_INFINITY;
    }
    let (sign, magnitude) = match big_cmp(&positive, &negative) {
        std::cmp::Ordering::Less => ("-", big_sub(&negative, &positive)),
        _ => ("", big_sub(&positive, &negative)),
    };
    let mut scaled = magnitude;
    for _ in 0..1074 {
        big_mul_small(&mut scaled, 5);
    }
    let digits = big_decimal(&scaled);
    let (int, frac) = if digits.len() > 1074 {
        (digits[..digits.len() - 1074].to_string(), digits[digits.len() - 1074..].to_string())
    } else {
        ("0".to_string(), format!("{digits:0>1074}"))
    };
    let text = format!("{sign}{int}.{frac}");
    let parsed: f64 = text.parse().expect("a decimal number");
    parsed + 0.0 // An exact zero is +0.0.
}

/// `a += m << shift` over little-endian base-2^32 digits.
fn big_add_shifted(a: &mut Vec<u32>, m: u64, shift: usize) {
    let (word, bit) = (shift / 32, shift % 32);
    let wide = u128::from(m) << bit;
    let mut carry = 0u128;
    let mut i = word;
    let mut rest = wide;
    while rest != 0 || carry != 0 {
        if a.len() <= i {
            a.resize(i + 1, 0);
        }
        let sum = u128::from(a[i]) + (rest & 0xffff_ffff) + carry;
        a[i] = sum as u32;
        carry = sum >> 32;
        rest >>= 32;
        i += 1;
    }
}

fn big_trim(a: &mut Vec<u32>) {
    while a.last() == Some(&0) {
        a.pop();
    }
}

fn big_cmp(a: &[u32], b: &[u32]) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    big_trim(&mut a);
    big_trim(&mut b);
    a.len().cmp(&b.len()).then_with(|| a.iter().rev().cmp(b.iter().rev()))
}

/// `a - b` for `a >= b`.
fn big_sub(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i64;
    for (i, digit) in a.iter().enumerate() {
        let mut d = i64::from(*digit) - i64::from(b.get(i).copied().unwrap_or(0)) - borrow;
        borrow = 0;
        if d < 0 {
            d += 1 << 32;
            borrow = 1;
        }
        out.push(d as u32);
    }
    assert_eq!(borrow, 0, "a >= b");
    big_trim(&mut out);
    out
}

fn big_mul_small(a: &mut Vec<u32>, m: u32) {
    let mut carry = 0u64;
    for digit in a.iter_mut() {
        let p = u64::from(*digit) * u64::from(m) + carry;
        *digit = p as u32;
        carry = p >> 32;
    }
    if carry != 0 {
        a.push(carry as u32);
    }
}

/// Decimal digits of a big integer ("0" for zero).
fn big_decimal(a: &[u32]) -> String {
    let mut n = a.to_vec();
    big_trim(&mut n);
    let mut chunks = Vec::new();
    while !n.is_empty() {
        let mut rem = 0u64;
        for digit in n.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*digit);
            *digit = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        big_trim(&mut n);
        chunks.push(rem);
    }
    let mut out = chunks.pop().map_or_else(|| "0".to_string(), |c| c.to_string());
    for c in chunks.iter().rev() {
        out.push_str(&format!("{c:09}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_itself_on_a_hand_checked_case() {
        // Sessions with gap 10: 100 and 110 are exactly a gap apart (two sessions); 105 bridges.
        let spec = Spec {
            window: Win::Session(10),
            agg: Agg::Count,
            key: KeyKind::Record,
            map_v: false,
            filter: false,
            lateness: 1_000,
            drop_late: true,
        };
        let rec = |ts| Rec { ts, key: Some(b"a".to_vec()), value: b"{}".to_vec() };
        let (rows, counts) = partition(&spec, &[rec(100), rec(110)]);
        assert_eq!(rows.len(), 2);
        let (rows, _) = partition(&spec, &[rec(100), rec(110), rec(105)]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[&(b"a".to_vec(), 100)].end, 120);
        assert_eq!(counts.applied, 2);
        assert_eq!(windows(Win::Hopping(10, 4), -1), vec![(-8, 2), (-4, 6)]);
    }

    #[test]
    fn the_exact_sum_on_hand_checked_cases() {
        assert_eq!(exact_sum(&[]), 0.0);
        assert_eq!(exact_sum(&[1e16, 1.0, -1e16]), 1.0, "f64 addition would give 0");
        assert_eq!(exact_sum(&[0.1, 0.2]), 0.30000000000000004);
        assert_eq!(exact_sum(&[0.1, 0.2, -0.3]), 2.7755575615628914e-17);
        assert_eq!(exact_sum(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(exact_sum(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert_eq!(exact_sum(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(exact_sum(&[9007199254740992.0, 1.0]), 9007199254740992.0, "ties to even");
        assert_eq!(exact_sum(&[-2.5, 1.25]), -1.25);
        assert_eq!(exact_sum(&[-0.0]).to_bits(), 0.0f64.to_bits());
        assert!(exact_sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
    }
}
