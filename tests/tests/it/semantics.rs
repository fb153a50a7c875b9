//! Named regression tests for the view semantics of `docs/semantics.md`, each through the engine:
//! the four defect classes of issue 9 (each opens with the bug, what it caused and the fix), the
//! two decisions the docs used to leave loose, skip counters, and explicit waiting.

use std::time::Duration;

use kappa_engine::operator::{Aggregate, LatePolicy, Window};
use kappa_engine::{
    Durability, Engine, Error, Offsets, ProducerBatch, Row, TopicConfig, ViewDef, ViewHandle,
};

const WAIT: Duration = Duration::from_secs(60);

fn engine(dir: &std::path::Path) -> Engine {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Engine::builder()
        .data_dir(dir)
        .shards(cpus.min(2))
        .io_memory_bytes(4 << 20)
        .build()
        .expect("engine")
}

/// Sends `(key, timestamp, value)` records in one batch per call and waits until `view` folded them.
fn send(engine: &Engine, view: &ViewHandle, records: &[(&str, i64, &str)]) {
    let mut batch = ProducerBatch::new();
    for (key, ts, value) in records {
        batch.push(Some(key.as_bytes()), value.as_bytes(), Some(*ts));
    }
    let acks = engine
        .producer()
        .with_durability(Durability::Written)
        .send_packed("events", batch)
        .expect("produce");
    view.wait_for(&acks, WAIT).expect("the view folds what was acknowledged");
}

fn summary(rows: &[Row]) -> Vec<(String, i64, i64, f64)> {
    rows.iter()
        .map(|r| {
            (String::from_utf8_lossy(&r.key).into_owned(), r.window_start, r.window_end, r.value)
        })
        .collect()
}

/// Regression (issue 9, defect 1): hopping windows were collected into a fixed array of 64 and
/// the definition check rounded size / hop down, so `size 6450, hop 100` was accepted and the
/// oldest of a record's 65 windows skipped (7,862 of 56,775 rows wrong). Now every window is
/// visited, and the check rounds up against a named limit.
#[test]
fn a_record_in_65_hopping_windows_counts_in_all_of_them() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let def = ViewDef::new("events")
        .window(Window::Hopping { size_ms: 6450, hop_ms: 100 })
        .lateness(1_000_000, LatePolicy::Drop);
    let view = engine.create_view("hops", def).expect("view");
    send(&engine, &view, &[("a", 6449, "{}")]);
    let rows = view.rows().expect("rows");
    assert_eq!(rows.len(), 65);
    assert_eq!((rows[0].window_start, rows[0].window_end), (0, 6450));
    assert!(rows.iter().all(|r| r.value == 1.0));
    let too_many = ViewDef::new("events").window(Window::Hopping { size_ms: 20_001, hop_ms: 2 });
    let Err(Error::Config { field, .. }) = engine.create_view("no", too_many) else {
        panic!("10,001 windows per record is refused");
    };
    assert_eq!(field, "window.hop_ms");
}

/// Regression (issue 9, defect 2): `json_number` gave up at the first `"v"` that was a string
/// value, so `{"unit":"v","v":-9.56}` yielded nothing (298 records silently skipped, and they did
/// not move the watermark); it also read a nested field of the same name first. Now a real parser
/// reads field paths, and every record without a number is counted by cause.
#[test]
fn json_values_are_found_and_misses_are_counted_by_cause() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let sums = ViewDef::new("events").map_json("v").aggregate(Aggregate::Sum);
    let view = engine.create_view("sums", sums).expect("view");
    send(
        &engine,
        &view,
        &[
            ("a", 1, r#"{"unit":"v","v":-9.5}"#),
            ("a", 2, r#"{"a":{"v":100},"v":2}"#),
            ("a", 3, r#"{"w":1}"#),
            ("a", 4, r#"{"v":"12"}"#),
            ("a", 5, "not json"),
        ],
    );
    assert_eq!(summary(&view.rows().expect("rows"))[0].3, -7.5);
    let c = view.progress().expect("progress").partitions[0].counters;
    assert_eq!((c.applied, c.no_field, c.not_a_number, c.not_json), (2, 1, 1, 1));
    assert_eq!(c.skipped(), 3);
    let metrics = engine.metrics().expect("metrics");
    let m = metrics.iter().flat_map(|m| &m.views).find(|v| v.view == "sums").expect("in metrics");
    assert_eq!(m.counters, c, "the shard's metrics report the same counters");
    let nested = ViewDef::new("events").map_json("a.v").aggregate(Aggregate::Sum);
    let nested = engine.create_view("nested", nested).expect("view");
    nested.wait_for(nested.log_end().expect("end"), WAIT).expect("folded");
    assert_eq!(summary(&nested.rows().expect("rows"))[0].3, 100.0);
    let Err(Error::Config { field, .. }) =
        engine.create_view("bad", ViewDef::new("events").map_json("a..v"))
    else {
        panic!("a bad path is refused");
    };
    assert_eq!(field, "map_json");
}

/// Regression (issue 9, defect 3): sessions on a computed key come from several partitions, and
/// `merge_rows` merged rows only with equal (key, window start), so one bucket's single session
/// came back as overlapping rows (counts 1956/6189/508/724 instead of 9,377). Now a key's
/// overlapping sessions merge across partitions at query time.
#[test]
fn sessions_of_a_computed_key_merge_across_partitions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(4)).expect("topic");
    let def = ViewDef::new("events")
        .key_by_json("bucket")
        .window(Window::Session { gap_ms: 10 })
        .lateness(1_000, LatePolicy::Drop);
    let view = engine.create_view("sessions", def).expect("view");
    // Twelve record keys spread over the four partitions; one bucket; events 5 ms apart, so
    // each partition sees pieces of one session with holes bigger than the gap.
    let records: Vec<(String, i64)> =
        (0..60).map(|i| (format!("user-{}", i % 12), 1_000 + 5 * i)).collect();
    let borrowed: Vec<(&str, i64, &str)> =
        records.iter().map(|(k, ts)| (k.as_str(), *ts, r#"{"bucket":"b1"}"#)).collect();
    send(&engine, &view, &borrowed);
    let per_partition: Vec<u64> =
        view.progress().expect("progress").partitions.iter().map(|p| p.counters.applied).collect();
    assert!(per_partition.iter().filter(|n| **n > 0).count() > 1, "spread: {per_partition:?}");
    assert_eq!(summary(&view.rows().expect("rows")), vec![("b1".to_string(), 1_000, 1_305, 60.0)]);
    assert_eq!(view.get(b"b1", 1_000).expect("get").map(|r| r.value), Some(60.0));
    let inside = view.windows(b"b1", 1_200, 1_201).expect("windows");
    assert_eq!(summary(&inside), vec![("b1".to_string(), 1_000, 1_305, 60.0)]);
}

/// Regression (issue 9, defect 4): a session record was dropped when `ts + gap` was at or below
/// the watermark, even when it touched a session still open, and 86 rows of a view differed. Now
/// a record is late only when the session it would join is closed.
#[test]
fn a_late_record_touching_an_open_session_is_merged_in() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let def =
        ViewDef::new("events").window(Window::Session { gap_ms: 10 }).lateness(0, LatePolicy::Drop);
    let view = engine.create_view("s", def).expect("view");
    // a: [100, 126) from 100, 108 and 116; b at 125 moves the watermark to 125.
    send(&engine, &view, &[("a", 100, "{}"), ("a", 108, "{}"), ("a", 116, "{}"), ("b", 125, "{}")]);
    // 112 + 10 <= 125, but [112, 122) touches a's open session [100, 126): merged in.
    send(&engine, &view, &[("a", 112, "{}")]);
    let rows = summary(&view.rows().expect("rows"));
    assert_eq!(rows[0], ("a".to_string(), 100, 126, 4.0));
    assert_eq!(view.progress().expect("progress").partitions[0].counters.late_dropped, 0);
    // Bridging only closed sessions is late: c has [300, 310) and [315, 325), the watermark is 400.
    send(&engine, &view, &[("c", 300, "{}"), ("c", 315, "{}"), ("b", 400, "{}")]);
    send(&engine, &view, &[("c", 308, "{}")]);
    let c: Vec<_> =
        summary(&view.rows().expect("rows")).into_iter().filter(|r| r.0 == "c").collect();
    assert_eq!(c, vec![("c".to_string(), 300, 310, 1.0), ("c".to_string(), 315, 325, 1.0)]);
    assert_eq!(view.progress().expect("progress").partitions[0].counters.late_dropped, 1);
}

/// Decision (issue 9, point 5a): events exactly `gap` apart are in different sessions; a session
/// is the union of half-open intervals `[t, t + gap)`, and touching intervals do not overlap.
#[test]
fn events_exactly_a_gap_apart_are_separate_sessions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let def = ViewDef::new("events")
        .window(Window::Session { gap_ms: 10 })
        .lateness(1_000, LatePolicy::Drop);
    let view = engine.create_view("s", def).expect("view");
    send(&engine, &view, &[("a", 100, "{}"), ("a", 110, "{}"), ("b", 100, "{}"), ("b", 109, "{}")]);
    assert_eq!(
        summary(&view.rows().expect("rows")),
        vec![
            ("a".to_string(), 100, 110, 1.0),
            ("a".to_string(), 110, 120, 1.0),
            ("b".to_string(), 100, 119, 2.0),
        ]
    );
}

/// Decision (issue 9, point 5b): the watermark is the largest event time of the records the
/// partition holds, including records the view's filter or map skips.
#[test]
fn skipped_records_move_the_watermark() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(1)).expect("topic");
    let def = ViewDef::new("events")
        .filter(|r| r.key() != Some(b"x"))
        .map_json("v")
        .window(Window::Tumbling { size_ms: 10 })
        .aggregate(Aggregate::Sum)
        .lateness(0, LatePolicy::Drop);
    let view = engine.create_view("w", def).expect("view");
    send(&engine, &view, &[("a", 100, r#"{"v":1}"#), ("x", 500, r#"{"v":1}"#)]);
    let p = &view.progress().expect("progress").partitions[0];
    assert_eq!(p.watermark, 500, "the filtered record moved the watermark");
    send(&engine, &view, &[("a", 900, r#"{"w":1}"#)]);
    assert_eq!(
        view.progress().expect("progress").partitions[0].watermark,
        900,
        "so did one without a field"
    );
    send(&engine, &view, &[("a", 105, r#"{"v":1}"#)]);
    let p = &view.progress().expect("progress").partitions[0];
    assert_eq!((p.counters.filtered, p.counters.no_field, p.counters.late_dropped), (1, 1, 1));
    assert_eq!(summary(&view.rows().expect("rows")), vec![("a".to_string(), 100, 110, 1.0)]);
    // Out-of-range event times are counted and do not move it.
    send(&engine, &view, &[("a", i64::MAX, r#"{"v":1}"#), ("a", i64::MIN, r#"{"v":1}"#)]);
    let p = &view.progress().expect("progress").partitions[0];
    assert_eq!((p.counters.time_out_of_range, p.watermark), (2, 900));
}

#[test]
fn waiting_is_explicit_and_bounded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = engine(temp.path());
    engine.create_topic("events", TopicConfig::new(2)).expect("topic");
    let view = engine.create_view("c", ViewDef::new("events")).expect("view");
    let ack = engine
        .producer()
        .send("events", kappa_engine::ProducerRecord::new(b"{}".to_vec()).key("a"))
        .expect("send");
    view.wait_for(ack, WAIT).expect("folded");
    assert_eq!(view.rows().expect("rows").len(), 1);
    // An offset nobody produced: the wait ends with a timeout that says what it waited for.
    let far = Offsets::new().at(ack.partition, ack.offset + 100);
    let Err(Error::Timeout { waiting_for, .. }) = view.wait_for(far, Duration::from_millis(50))
    else {
        panic!("a wait for records that never come times out");
    };
    assert!(waiting_for.contains(&format!("partition {}", ack.partition)), "{waiting_for}");
    assert!(matches!(
        view.wait_for(Offsets::new().at(9, 1), WAIT),
        Err(Error::UnknownPartition { partition: 9, .. })
    ));
    // A rebuild resolves at the swap, woken by the shard, with the new version served.
    let rebuild = engine.rebuild_view("c", ViewDef::new("events").revision("2")).expect("rebuild");
    rebuild.wait_swapped(WAIT).expect("swapped");
    assert_eq!(view.version(), rebuild.version());
    assert_eq!(view.rows().expect("rows").len(), 1);
    engine.shutdown().expect("shutdown");
    assert!(matches!(
        view.wait_for(ack, WAIT),
        Err(Error::ShutDown) | Err(Error::UnknownView { .. })
    ));
}
