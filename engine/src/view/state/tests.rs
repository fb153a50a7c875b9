//! Each aggregate and window type against a reference model (a plain fold over a `Vec`), late
//! records, sessions, the digest, and the checkpoint round trip.

use std::collections::{BTreeMap, BTreeSet};

use kappa_storage::{BatchEncoder, BatchRef, Limits, ProducerInfo, Record};
use rkyv::util::AlignedVec;

use super::*;
use crate::operator::window::ALL_TIME;

/// (timestamp, key, value) triples, deterministic, with out-of-order timestamps.
fn workload(n: usize, seed: u64) -> Vec<(i64, String, f64)> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let jitter = (next() % 40) as i64 - 20;
            let ts = 1_000 + i as i64 * 3 + jitter;
            let key = format!("k{}", next() % 7);
            let value = (next() % 1000) as f64 / 10.0;
            (ts, key, value)
        })
        .collect()
}

/// Encodes the workload as one stored batch and feeds every record to `state`.
fn feed(state: &mut PartitionState, def: &ViewDef, records: &[(i64, String, f64)]) {
    let values: Vec<String> = records.iter().map(|(_, _, v)| format!("{{\"v\":{v}}}")).collect();
    let batch: Vec<Record<'_>> = records
        .iter()
        .zip(&values)
        .map(|((ts, k, _), v)| Record::new(*ts, Some(k.as_bytes()), v.as_bytes()))
        .collect();
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.encode(state.next_offset, &batch, ProducerInfo::default()).expect("encodes");
    let mut frame = AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    let view = BatchRef::from_frame(&frame).expect("valid");
    for record in view.records() {
        state.apply(def, &record).expect("no user code panics here");
    }
}

fn def(window: Window, aggregate: Aggregate) -> ViewDef {
    ViewDef::new("t")
        .map(|r| crate::operator::json_number(r.value(), "v"))
        .window(window)
        .aggregate(aggregate)
        .lateness(1_000_000, LatePolicy::Update)
}

/// Reference: group values by (key, window start) in arrival order.
fn reference(records: &[(i64, String, f64)], window: Window) -> BTreeMap<(Vec<u8>, i64), Vec<f64>> {
    let mut groups: BTreeMap<(Vec<u8>, i64), Vec<f64>> = BTreeMap::new();
    for (ts, key, value) in records {
        let mut starts = Vec::new();
        match window {
            Window::None => starts.push(ALL_TIME),
            Window::Tumbling { size_ms } => starts.push(ts.div_euclid(size_ms) * size_ms),
            Window::Hopping { size_ms, hop_ms } => {
                let mut s = ts.div_euclid(hop_ms) * hop_ms;
                while s > ts - size_ms {
                    starts.push(s);
                    s -= hop_ms;
                }
            }
            Window::Session { .. } => unreachable!(),
        }
        for s in starts {
            groups.entry((key.as_bytes().to_vec(), s)).or_default().push(*value);
        }
    }
    groups
}

fn expected(aggregate: &Aggregate, values: &[f64]) -> f64 {
    match aggregate {
        Aggregate::Count => values.len() as f64,
        // The exact sum rounded once (docs/semantics.md), by an independent algorithm.
        Aggregate::Sum => crate::operator::exact::tests::fsum(values),
        Aggregate::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Mean => crate::operator::exact::tests::fsum(values) / values.len() as f64,
        Aggregate::DistinctCount => {
            values.iter().map(|v| v.to_bits()).collect::<BTreeSet<_>>().len() as f64
        }
        Aggregate::Custom(_) => unreachable!(),
    }
}

#[test]
fn every_aggregate_and_window_matches_the_reference_model() {
    let records = workload(3_000, 7);
    let windows = [
        Window::None,
        Window::Tumbling { size_ms: 100 },
        Window::Hopping { size_ms: 100, hop_ms: 25 },
    ];
    let aggregates = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
        Aggregate::DistinctCount,
    ];
    for window in windows {
        for aggregate in &aggregates {
            let def = def(window, aggregate.clone());
            let mut state = PartitionState::new(0);
            feed(&mut state, &def, &records);
            let reference = reference(&records, window);
            let got: BTreeMap<(Vec<u8>, i64), f64> = state
                .groups
                .iter()
                .flat_map(|(k, w)| {
                    w.iter().map(move |(s, c)| ((k.clone(), *s), aggregate.result(&c.agg)))
                })
                .collect();
            assert_eq!(got.len(), reference.len(), "{window:?} {aggregate:?}: group count");
            for (group, values) in &reference {
                let want = expected(aggregate, values);
                let have = got[group];
                if matches!(aggregate, Aggregate::DistinctCount) {
                    // HyperLogLog: ~3% standard error, and register collisions at tiny counts.
                    assert!(
                        (have - want).abs() <= (want * 0.1).max(2.5),
                        "{window:?} distinct {group:?}: {have} vs {want}"
                    );
                } else {
                    assert_eq!(
                        have.to_bits(),
                        want.to_bits(),
                        "{window:?} {aggregate:?} {group:?}: {have} vs {want}"
                    );
                }
            }
            assert_eq!(state.next_offset, records.len() as u64);
        }
    }
}

#[test]
fn sessions_match_the_reference_model() {
    let records = workload(2_000, 11);
    let gap = 25;
    let def = def(Window::Session { gap_ms: gap }, Aggregate::Count);
    let mut state = PartitionState::new(0);
    feed(&mut state, &def, &records);
    // Reference: per key, sorted event times split where the next is `gap` or more later (the
    // intervals [t, t + gap) of events exactly `gap` apart touch but do not overlap).
    let mut per_key: BTreeMap<Vec<u8>, Vec<i64>> = BTreeMap::new();
    for (ts, key, _) in &records {
        per_key.entry(key.as_bytes().to_vec()).or_default().push(*ts);
    }
    for (key, mut times) in per_key {
        times.sort_unstable();
        let mut sessions: Vec<(i64, i64, u64)> = Vec::new();
        for t in times {
            match sessions.last_mut() {
                Some(last) if t < last.1 => {
                    last.1 = t + gap;
                    last.2 += 1;
                }
                _ => sessions.push((t, t + gap, 1)),
            }
        }
        let got: Vec<(i64, i64, u64)> = state.groups[&key]
            .iter()
            .map(|(s, c)| {
                (
                    *s,
                    c.end_ms,
                    match c.agg {
                        AggState::Count(n) => n,
                        _ => unreachable!(),
                    },
                )
            })
            .collect();
        assert_eq!(got, sessions, "sessions of {}", String::from_utf8_lossy(&key));
    }
}

#[test]
fn late_records_follow_the_policy_and_are_counted() {
    // Window 100 ms, lateness 50: after event time 500 the watermark is 450, so windows ending at
    // or before 450 are closed.
    let records = vec![
        (100, "a".to_string(), 1.0),
        (500, "a".to_string(), 1.0),
        (120, "a".to_string(), 1.0), // Late: window [100, 200) closed.
        (460, "a".to_string(), 1.0), // On time: window [400, 500) ends after 450.
    ];
    for (policy, count_100, dropped, updated) in
        [(LatePolicy::Drop, 1.0, 1, 0), (LatePolicy::Update, 2.0, 0, 1)]
    {
        let def = ViewDef::new("t").window(Window::Tumbling { size_ms: 100 }).lateness(50, policy);
        let mut state = PartitionState::new(0);
        feed(&mut state, &def, &records);
        let a = &state.groups[&b"a"[..]];
        assert_eq!(Aggregate::Count.result(&a[&100].agg), count_100, "{policy:?}");
        assert_eq!(Aggregate::Count.result(&a[&400].agg), 1.0);
        assert_eq!((state.counters.late_dropped, state.counters.late_updated), (dropped, updated));
        assert_eq!(state.watermark(50), 450);
    }
}

#[test]
fn digest_and_checkpoint_round_trip() {
    let records = workload(1_000, 3);
    let def = def(Window::Tumbling { size_ms: 50 }, Aggregate::Mean);
    let mut a = PartitionState::new(0);
    feed(&mut a, &def, &records);
    let mut b = PartitionState::new(0);
    feed(&mut b, &def, &records[..400]);
    feed(&mut b, &def, &records[400..]);
    assert_eq!(
        a.digest(),
        b.digest(),
        "the same log prefix gives the same digest however it is fed"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.ckpt");
    write_checkpoint(&path, of(), &a).expect("write");
    let (back_of, back) = read_checkpoint(&path).expect("read");
    assert_eq!(back_of, of(), "a checkpoint says what it belongs to");
    assert_eq!(back.digest(), a.digest());
    assert_eq!(back.groups, a.groups);
    // Damage is reported, never half-read.
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    assert!(read_checkpoint(&path).is_err());
    let mut c = PartitionState::new(0);
    feed(&mut c, &def, &records[..999]);
    assert_ne!(c.digest(), a.digest());
}

/// Sum of squares as a custom aggregate: state is an f64 in 8 bytes.
struct SumOfSquares;

impl crate::operator::CustomAggregate for SumOfSquares {
    fn init(&self) -> Vec<u8> {
        0f64.to_le_bytes().to_vec()
    }
    fn update(&self, state: &mut Vec<u8>, _record: &RecordRef<'_>, value: Option<f64>) {
        let v = value.unwrap_or(0.0);
        let s = f64::from_le_bytes(state[..8].try_into().expect("8 bytes")) + v * v;
        state.copy_from_slice(&s.to_le_bytes());
    }
    fn merge(&self, into: &mut Vec<u8>, other: &[u8]) {
        let s = f64::from_le_bytes(into[..8].try_into().expect("8 bytes"))
            + f64::from_le_bytes(other[..8].try_into().expect("8 bytes"));
        into.copy_from_slice(&s.to_le_bytes());
    }
    fn result(&self, state: &[u8]) -> f64 {
        f64::from_le_bytes(state[..8].try_into().expect("8 bytes"))
    }
}

#[test]
fn custom_aggregates_fold_and_merge_like_the_reference() {
    let records = workload(1_000, 5);
    let aggregate = Aggregate::Custom(std::sync::Arc::new(SumOfSquares));
    assert!(aggregate.is_mergeable());
    let def = ViewDef::new("t")
        .map(|r| crate::operator::json_number(r.value(), "v"))
        .window(Window::Tumbling { size_ms: 200 })
        .aggregate(aggregate.clone())
        .lateness(1_000_000, LatePolicy::Update);
    let mut state = PartitionState::new(0);
    feed(&mut state, &def, &records);
    for ((key, start), values) in reference(&records, Window::Tumbling { size_ms: 200 }) {
        let want = values.iter().fold(0.0, |a, v| a + v * v);
        let cell = &state.groups[&key][&start];
        assert_eq!(aggregate.result(&cell.agg).to_bits(), want.to_bits());
    }
    // Merging two halves equals folding the whole (what queries do across partitions).
    let mut a = aggregate.init();
    let mut b = aggregate.init();
    let mut whole = aggregate.init();
    let value = |i: usize| records[i].2;
    let any = {
        let mut encoder = BatchEncoder::new(Limits::default());
        encoder.encode(0, &[Record::new(0, None, b"x")], ProducerInfo::default()).expect("encodes");
        let mut frame = AlignedVec::<16>::new();
        frame.extend_from_slice(encoder.frame());
        frame
    };
    let batch = BatchRef::from_frame(&any).expect("valid");
    let record = batch.record(0).expect("record");
    for i in 0..10 {
        aggregate.update(if i < 5 { &mut a } else { &mut b }, &record, Some(value(i)));
        aggregate.update(&mut whole, &record, Some(value(i)));
    }
    aggregate.merge(&mut a, &b);
    // Floating-point addition is not associative: merged halves agree to rounding, not bits.
    let (merged, folded) = (aggregate.result(&a), aggregate.result(&whole));
    assert!((merged - folded).abs() <= folded.abs() * 1e-12, "{merged} vs {folded}");
}

/// A snapshot copied a few groups at a time encodes to exactly the bytes of one taken in one go
/// (the checkpoint format does not depend on the step), and `covers` sees any fold in between.
#[test]
fn a_snapshot_in_steps_is_the_checkpoint_of_one_cut() {
    let records = workload(2_000, 11);
    let def = def(Window::Hopping { size_ms: 60, hop_ms: 20 }, Aggregate::Sum);
    let mut state = PartitionState::new(0);
    feed(&mut state, &def, &records[..1_500]);
    assert!(state.groups.len() > 3, "a few groups at least");
    let path = std::path::Path::new("/x.ckpt");
    let whole = encode_checkpoint(path, of(), &state).expect("encode");
    let cells: usize = state.groups.values().map(BTreeMap::len).sum();
    for step in [1, 2, 3, 7, state.groups.len(), cells - 1, cells, cells + 1] {
        let mut snapshot = Snapshot::begin(of(), &state);
        let mut steps = 1;
        while snapshot.copy_more(&state, step) == Step::More {
            assert!(snapshot.covers(&state));
            steps += 1;
        }
        assert!(steps >= cells / step, "step {step}: copied in {steps} steps");
        assert_eq!(snapshot.next_offset(), state.next_offset);
        assert_eq!(snapshot.encode(path).expect("encode"), whole, "step {step}");
    }
    let (_, back) = decode_checkpoint(path, &whole).expect("decode");
    assert_eq!(back.digest(), state.digest());
    let snapshot = Snapshot::begin(of(), &state);
    feed(&mut state, &def, &records[1_500..]);
    assert!(!snapshot.covers(&state), "a fold after the cut is seen");
}

/// A snapshot step copies at most its count of (key, window) groups, also when one key holds
/// more windows than a step (it resumes inside the key): a step bounded by keys copied every
/// window of each, and held the shard for milliseconds on a view with many windows per key.
#[test]
fn a_snapshot_step_copies_at_most_its_groups_even_inside_one_key() {
    let def = def(Window::Tumbling { size_ms: 10 }, Aggregate::Sum);
    let mut state = PartitionState::new(0);
    // Two keys, 500 windows each.
    let records: Vec<(i64, String, f64)> =
        (0..1_000).map(|i| (i as i64 * 10, format!("k{}", i % 2), 1.0)).collect();
    feed(&mut state, &def, &records);
    let cells: usize = state.groups.values().map(BTreeMap::len).sum();
    assert_eq!((state.groups.len(), cells), (2, 1_000));
    let copied = |s: &Snapshot| s.data.groups.iter().map(|(_, w)| w.len()).sum::<usize>();
    let mut snapshot = Snapshot::begin(of(), &state);
    let mut before = 0;
    let mut steps = 0;
    loop {
        let done = snapshot.copy_more(&state, 64) == Step::Done;
        steps += 1;
        let now = copied(&snapshot);
        assert!(now - before <= 64, "step {steps} copied {} groups", now - before);
        before = now;
        if done {
            break;
        }
    }
    assert_eq!(before, cells);
    assert_eq!(steps, cells.div_ceil(64));
    let path = std::path::Path::new("/x.ckpt");
    assert_eq!(
        snapshot.encode(path).expect("encode"),
        encode_checkpoint(path, of(), &state).expect("encode")
    );
}

/// A snapshot step that resumes inside a key finds the state changed under it when that key, or
/// the window it stopped after, is gone: a change `covers` does not see (it moves no offset,
/// counter or event time; an eviction or compaction path could make one). The step looked the key
/// up with `expect`, so a removed key panicked the shard in the middle of a checkpoint; it now
/// says `Step::Moved`, and so does every later step, so the caller skips this checkpoint.
#[test]
fn a_snapshot_step_reports_a_state_that_moved_under_it_instead_of_panicking() {
    let def = def(Window::Tumbling { size_ms: 10 }, Aggregate::Sum);
    let mut state = PartitionState::new(0);
    // Two keys, 100 windows each.
    let records: Vec<(i64, String, f64)> =
        (0..200).map(|i| (i as i64 * 10, format!("k{}", i % 2), 1.0)).collect();
    feed(&mut state, &def, &records);
    let first = state.groups.keys().next().expect("a key").clone();
    let begin = |state: &PartitionState| {
        let mut snapshot = Snapshot::begin(of(), state);
        assert_eq!(snapshot.copy_more(state, 30), Step::More);
        assert_eq!(snapshot.after, Some((first.clone(), Some(580))), "stopped inside the key");
        snapshot
    };

    // The key the copy stopped inside is removed.
    let mut snapshot = begin(&state);
    let mut moved = state.clone();
    moved.groups.remove(first.as_slice());
    assert!(snapshot.covers(&moved), "unseen by covers");
    assert_eq!(snapshot.copy_more(&moved, 30), Step::Moved);
    assert_eq!(snapshot.copy_more(&moved, 30), Step::Moved, "and stays moved");
    assert_eq!(snapshot.copy_more(&state, 30), Step::Moved, "even if the state comes back");

    // The window the copy stopped after is removed (older windows evicted, say).
    let mut snapshot = begin(&state);
    let mut moved = state.clone();
    moved.groups.get_mut(first.as_slice()).expect("the key").retain(|start, _| *start > 580);
    assert!(snapshot.covers(&moved), "unseen by covers");
    assert_eq!(snapshot.copy_more(&moved, 30), Step::Moved);

    // Unchanged, the same copy goes on to the checkpoint of one cut.
    let mut snapshot = begin(&state);
    while snapshot.copy_more(&state, 30) == Step::More {}
    let path = std::path::Path::new("/x.ckpt");
    assert_eq!(
        snapshot.encode(path).expect("encode"),
        encode_checkpoint(path, of(), &state).expect("encode")
    );
}

/// A checkpoint resumes only its own partition of its own version and definition, or a version
/// seeded from it with the same view, partition and shape.
#[test]
fn a_checkpoint_resumes_only_what_it_belongs_to() {
    let ours = of();
    assert!(of().resumes(&ours, None));
    for other in [
        CheckpointOf { view: "w".into(), ..of() },
        CheckpointOf { version: 2, ..of() },
        CheckpointOf { partition: 1, ..of() },
        CheckpointOf { revision: "r2".into(), ..of() },
        CheckpointOf { topic_incarnation: 8, ..of() },
        CheckpointOf { shape: "key=record key\nwindow=None\naggregate=Sum\n".into(), ..of() },
    ] {
        assert!(!other.resumes(&ours, None), "{other}");
    }
    // Version 2 seeded from version 1: version 1's checkpoint of another revision, same shape.
    let seeded = CheckpointOf { version: 2, revision: "r2".into(), ..of() };
    assert!(of().resumes(&seeded, Some(1)));
    assert!(!of().resumes(&seeded, Some(3)), "the seed is version 3");
    let reshaped = CheckpointOf { shape: "key=record key\n".into(), ..seeded.clone() };
    assert!(!of().resumes(&reshaped, Some(1)), "another shape");
    let recreated = CheckpointOf { topic_incarnation: 8, ..seeded.clone() };
    assert!(!of().resumes(&recreated, Some(1)), "another incarnation of the topic");
    let elsewhere = CheckpointOf { partition: 1, ..seeded };
    assert!(!of().resumes(&elsewhere, Some(1)), "another partition");
}

/// What the checkpoints of these tests belong to.
fn of() -> CheckpointOf {
    CheckpointOf {
        view: "v".into(),
        version: 1,
        partition: 0,
        revision: "r1".into(),
        shape: "key=record key\nwindow=None\naggregate=Count\n".into(),
        topic_incarnation: 7,
    }
}

/// Formats 4 and 5 decode (the old layouts, as written by the code of those formats) and get
/// the identity they lack from where they lie, or are refused: a topic that records an
/// incarnation is newer than them; a format-4 checkpoint needs its version's shape file, and
/// then resumes only into that shape.
#[test]
fn old_checkpoint_formats_decode_and_establish_their_identity() {
    let path = Path::new("/v/1/0/00000000000000000042.ckpt");
    let mut state = PartitionState::new(42);
    state.max_event_time = 99;
    let old_topic = CheckpointOf { topic_incarnation: 0, ..of() };
    for format in [4u16, 5] {
        let bytes = encode_old_checkpoint(format, &old_topic, &state);
        let (stored, back) = decode_stored(path, &bytes).expect("decodes");
        assert_eq!((back.next_offset, back.max_event_time), (42, 99));
        assert_eq!(checkpoint_next_offset(path, &bytes).expect("offset"), 42);
        assert!(decode_checkpoint(path, &bytes).is_err(), "format 6 only");
        let shape = Some(old_topic.shape.as_str());
        let established = stored.clone().establish(&old_topic, shape).expect("established");
        assert!(established.resumes(&old_topic, None), "format {format}: {established}");
        let refused = stored.clone().establish(&of(), shape);
        assert!(refused.is_err_and(|e| e.contains("incarnation")), "format {format}");
        if format == 4 {
            assert!(stored.clone().establish(&old_topic, None).is_err(), "no shape file");
            let other = stored.establish(&old_topic, Some("key=record key\n")).expect("shape");
            assert!(!other.resumes(&old_topic, None), "another shape resumed");
        }
    }
    let mut three = encode_old_checkpoint(4, &old_topic, &state);
    three[4] = 3;
    assert!(decode_stored(path, &three).is_err(), "format 3 is not read");
}
