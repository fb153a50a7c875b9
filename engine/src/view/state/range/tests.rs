//! Split-and-merge against a serial fold: random histories (out-of-order and far-late event
//! times, times out of range, missing and malformed values, numbers whose `f64` sum depends on
//! order), random windows, lateness and late policies, every built-in aggregate, random cut
//! points, a filter that panics on some records (skipped under `OnError::Skip`). The merged
//! state must equal the serial one: groups, bits, counters, digest.

use kappa_storage::{BatchEncoder, BatchRef, Limits, ProducerInfo, Record};
use proptest::prelude::*;
use rkyv::util::AlignedVec;

use super::*;
use crate::operator::{Aggregate, LatePolicy, Window};
use crate::view::def::{OnError, ViewDef};

const VALUES: [&str; 10] = [
    r#"{"v":1}"#,
    r#"{"v":0.1}"#,
    r#"{"v":1e16}"#,
    r#"{"v":-1e16}"#,
    r#"{"v":-0.0}"#,
    r#"{"v":2.5e-300}"#,
    r#"{"v":"x"}"#,
    r#"{"w":3}"#,
    "not json",
    r#"{"v":1.7976931348623157e308}"#,
];

/// (event time, key, value index) per record; `None` key: a record without one.
type History = Vec<(i64, Option<u8>, usize)>;

fn history() -> impl Strategy<Value = History> {
    // A random walk of event times with jumps both ways, so records arrive late by varying
    // amounts; now and then a time out of the valid range.
    let step = prop_oneof![
        8 => -20i64..40,
        1 => -2_000i64..-200,
        1 => 200i64..2_000,
        1 => Just(i64::MAX),
    ];
    proptest::collection::vec(
        (step, proptest::option::weighted(0.95, 0u8..6), 0..VALUES.len()),
        1..300,
    )
    .prop_map(|steps| {
        let mut t = 10_000i64;
        steps
            .into_iter()
            .map(|(step, key, v)| {
                if step == i64::MAX {
                    return (i64::MAX, key, v);
                }
                t += step;
                (t, key, v)
            })
            .collect()
    })
}

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        Just(Window::None),
        (1i64..300).prop_map(|size_ms| Window::Tumbling { size_ms }),
        (1i64..300, 1i64..100)
            .prop_map(|(size_ms, hop)| Window::Hopping { size_ms, hop_ms: hop.min(size_ms) }),
    ]
}

fn aggregate() -> impl Strategy<Value = Aggregate> {
    prop_oneof![
        Just(Aggregate::Count),
        Just(Aggregate::Sum),
        Just(Aggregate::Min),
        Just(Aggregate::Max),
        Just(Aggregate::Mean),
        Just(Aggregate::DistinctCount),
    ]
}

/// Encodes records `[from, to)` of the history at their offsets and folds them into `state`.
fn fold(state: &mut PartitionState, def: &ViewDef, history: &History, from: usize, to: usize) {
    if from == to {
        return;
    }
    let keys: Vec<Option<[u8; 1]>> =
        history[from..to].iter().map(|(_, k, _)| k.map(|k| [k])).collect();
    let records: Vec<Record<'_>> = history[from..to]
        .iter()
        .zip(&keys)
        .map(|((ts, _, v), key)| {
            Record::new(*ts, key.as_ref().map(|k| &k[..]), VALUES[*v].as_bytes())
        })
        .collect();
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.encode(from as u64, &records, ProducerInfo::default()).expect("encodes");
    let mut frame = AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&frame).expect("valid");
    for record in batch.records() {
        state.apply(def, &record).expect("no user code panics here");
    }
}

fn same(merged: &PartitionState, serial: &PartitionState) -> Result<(), TestCaseError> {
    prop_assert_eq!(&merged.groups, &serial.groups);
    prop_assert_eq!(merged.counters, serial.counters);
    prop_assert_eq!(merged.max_event_time, serial.max_event_time);
    prop_assert_eq!(merged.next_offset, serial.next_offset);
    prop_assert_eq!(merged.digest(), serial.digest());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn ranges_merged_in_offset_order_equal_a_serial_fold(
        history in history(),
        window in window(),
        aggregate in aggregate(),
        lateness in prop_oneof![Just(0i64), 0i64..500, Just(1i64 << 40)],
        drop in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        prefix in any::<prop::sample::Index>(),
        panics in proptest::bool::weighted(0.25),
        step in 1usize..4,
    ) {
        let late = if drop { LatePolicy::Drop } else { LatePolicy::Update };
        let mut def = ViewDef::new("t")
            .map_json("v")
            .window(window)
            .aggregate(aggregate)
            .lateness(lateness, late);
        if panics {
            // User code that panics on some records, skipped and counted (`panicked`) in a range
            // exactly as in a serial fold.
            def = def
                .filter(|r| if r.value() == b"not json" { panic!("a poison record") } else { true })
                .on_error(OnError::Skip);
        }
        let n = history.len();
        let mut serial = PartitionState::new(0);
        fold(&mut serial, &def, &history, 0, n);

        // A prefix folded serially (a checkpoint, or records before the split), then ranges.
        let prefix = prefix.index(n + 1);
        let mut points: Vec<usize> = cuts.iter().map(|c| prefix + c.index(n - prefix + 1)).collect();
        points.push(prefix);
        points.push(n);
        points.sort_unstable();
        points.dedup();
        let mut merged = PartitionState::new(0);
        fold(&mut merged, &def, &history, 0, prefix);
        for pair in points.windows(2) {
            let mut range = RangeFold::new(pair[0] as u64);
            fold(&mut range.state, &def, &history, pair[0], pair[1]);
            prop_assert_eq!(range.next_offset(), pair[1] as u64);
            // In steps of a few keys, as the owning shard merges (yielding between steps):
            // the state's offset, counters and event time move only when the merge finishes.
            let mut pending = merged.begin_merge(&def, range).expect("contiguous and splittable");
            let (offset, counters, time) = (merged.next_offset, merged.counters, merged.max_event_time);
            while !merged.merge_step(&def, &mut pending, step) {
                prop_assert_eq!(merged.next_offset, offset);
                prop_assert_eq!(merged.counters, counters);
                prop_assert_eq!(merged.max_event_time, time);
            }
            merged.finish_merge(pending);
        }
        same(&merged, &serial)?;
    }
}

#[test]
fn a_range_closed_by_the_prefix_is_late_as_in_a_serial_fold() {
    // The prefix reaches t = 1000; the range holds only records for a window the prefix closed.
    let history: History = vec![(1_000, Some(1), 0), (10, Some(1), 0), (20, Some(2), 0)];
    for late in [LatePolicy::Drop, LatePolicy::Update] {
        let def = ViewDef::new("t")
            .map_json("v")
            .window(Window::Tumbling { size_ms: 100 })
            .aggregate(Aggregate::Count)
            .lateness(50, late);
        let mut serial = PartitionState::new(0);
        fold(&mut serial, &def, &history, 0, 3);
        let mut merged = PartitionState::new(0);
        fold(&mut merged, &def, &history, 0, 1);
        let mut range = RangeFold::new(1);
        fold(&mut range.state, &def, &history, 1, 3);
        assert_eq!(range.state.counters.late_dropped + range.state.counters.late_updated, 0);
        merged.merge_range(&def, range).expect("merges");
        assert_eq!(merged.groups, serial.groups, "{late:?}");
        assert_eq!(merged.counters, serial.counters, "{late:?}");
        match late {
            LatePolicy::Drop => assert_eq!(serial.counters.late_dropped, 2),
            LatePolicy::Update => assert_eq!(serial.counters.late_updated, 2),
        }
    }
}

#[test]
fn sessions_custom_aggregates_and_gaps_are_refused() {
    let def = ViewDef::new("t").window(Window::Session { gap_ms: 10 });
    let mut state = PartitionState::new(0);
    assert!(matches!(
        state.merge_range(&def, RangeFold::new(0)),
        Err(MergeError::NotSplittable(_))
    ));
    let def = ViewDef::new("t");
    assert_eq!(
        state.merge_range(&def, RangeFold::new(5)),
        Err(MergeError::NotContiguous { state_next: 0, range_from: 5 })
    );
}
