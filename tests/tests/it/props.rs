//! Property tests: views built by the engine equal the reference model (`model.rs`, written from
//! `docs/semantics.md`) row for row and counter for counter, over random workloads: out-of-order
//! and very late events, records without key or field or with malformed JSON, every window kind
//! and aggregate, computed keys spread over partitions, several partitions and shards (derived from
//! the CPUs online), boundary and extreme timestamps, both late policies, lateness 0. Each case
//! checks views built live, rebuilt by replay (and swapped in), resumed from checkpoints after a
//! restart (with another shard count), and built fresh after the restart.
//!
//! `KAPPA_PROPTEST_CASES` sets the number of cases (default 16, about a second each in debug);
//! `KAPPA_PROPTEST_SEED` replays one run. A minimized failure is printed as a `Case` and belongs
//! in `semantics.rs` as a named regression test.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use kappa_engine::operator::{Aggregate, LatePolicy, Window};
use kappa_engine::{
    BatchAck, Durability, Engine, ProducerBatch, ReplayConfig, Seek, TopicConfig, ViewDef,
    ViewHandle,
};
use kappa_storage::LogConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRng, TestRunner};

use crate::model::{self, Agg, KeyKind, Rec, Spec, Win};

const TOPIC: &str = "t";
const WAIT: Duration = Duration::from_secs(60);
const T0: i64 = 1_000_000;

/// What the generator makes of a record's timestamp.
#[derive(Debug, Clone, Copy)]
pub enum Ts {
    /// `T0 + 3 * index + jitter`: mostly in order, a little out of order.
    Near(i8),
    /// Far behind the others (very late).
    Late(u16),
    /// Exactly on a multiple of `unit` near the current time (window edges, gap multiples).
    Edge(u8),
    /// One of the extremes (in and out of the accepted range).
    Extreme(u8),
}

/// What the generator makes of a record's value.
#[derive(Debug, Clone, Copy)]
pub enum Val {
    /// `{"g":..,"v":n/4}`, with `g` from a small set.
    Number(i16, u8),
    /// The issue's trap: a string holding the field's name before the number.
    Decoy(i16, u8),
    /// A nested object with a `v` of its own, then the top-level `v`.
    Nested(i16, u8),
    /// No `v` at all.
    NoField(u8),
    /// `v` holds a string.
    NotANumber(u8),
    /// Not JSON.
    Garbage(u8),
    /// A number whose sum `f64` addition would get wrong or that sits at an edge of the format
    /// (`WILD`): the exact sum must hold.
    Wild(u8, u8),
}

/// Numbers for `Val::Wild`: cancellation, many bits, subnormals, the largest finite, zeros.
const WILD: [&str; 12] = [
    "0.1",
    "1e16",
    "-1e16",
    "1e-300",
    "-1e-300",
    "5e-324",
    "1.7976931348623157e308",
    "-1.7976931348623157e308",
    "3.141592653589793",
    "2.5e-10",
    "-0.0",
    "0.30000000000000004",
];

#[derive(Debug, Clone, Copy)]
pub struct Gen {
    pub key: Option<u8>,
    pub ts: Ts,
    pub val: Val,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub partitions: u32,
    pub shards: [usize; 2],
    pub checkpoint_every: u64,
    /// The smallest replay range task: splits of the sealed history over the shards at random
    /// points (1<<30: never split, whole partitions).
    pub task_records_min: u64,
    pub specs: Vec<Spec>,
    /// Produced before the views exist, while they run, and after a restart.
    pub phases: [Vec<Gen>; 3],
}

const EXTREMES: [i64; 8] = [
    i64::MIN,
    i64::MAX,
    model::EVENT_TIME_MIN,
    model::EVENT_TIME_MAX,
    model::EVENT_TIME_MIN - 1,
    model::EVENT_TIME_MAX + 1,
    0,
    -1,
];

fn timestamp(ts: Ts, index: usize) -> i64 {
    let now = T0 + 3 * index as i64;
    match ts {
        Ts::Near(j) => now + i64::from(j) / 4,
        Ts::Late(back) => now - 200 - i64::from(back),
        Ts::Edge(unit) => {
            let unit = [7, 10, 25, 50, 100, 650][usize::from(unit) % 6];
            now.div_euclid(unit) * unit
        }
        Ts::Extreme(i) => EXTREMES[usize::from(i) % EXTREMES.len()],
    }
}

fn group(g: u8) -> String {
    match g % 8 {
        0..=3 => format!(r#""g":"b{}","#, g % 4),
        4 => r#""g":7,"#.to_string(),
        5 => r#""g":true,"#.to_string(),
        6 => r#""g":null,"#.to_string(),
        _ => String::new(),
    }
}

fn value(val: Val) -> Vec<u8> {
    let n = |v: i16| f64::from(v) / 4.0;
    match val {
        Val::Number(v, g) => format!(r#"{{{}"v":{}}}"#, group(g), n(v)),
        Val::Decoy(v, g) => format!(r#"{{"unit":"v",{}"v":{}}}"#, group(g), n(v)),
        Val::Nested(v, g) => {
            format!(r#"{{"a":{{"v":99}},{}"v":{},"s":"\"v\":1"}}"#, group(g), n(v))
        }
        Val::NoField(g) => format!(r#"{{{}"w":1}}"#, group(g)),
        Val::NotANumber(g) => format!(r#"{{{}"v":"12"}}"#, group(g)),
        Val::Garbage(g) => format!("not json {{{g}"),
        Val::Wild(i, g) => {
            format!(r#"{{{}"v":{}}}"#, group(g), WILD[usize::from(i) % WILD.len()])
        }
    }
    .into_bytes()
}

fn gen_strategy() -> impl Strategy<Value = Gen> {
    let ts = prop_oneof![
        12 => any::<i8>().prop_map(Ts::Near),
        2 => (0u16..2000).prop_map(Ts::Late),
        2 => any::<u8>().prop_map(Ts::Edge),
        1 => any::<u8>().prop_map(|i| if i % 8 == 0 { Ts::Extreme(i / 8) } else { Ts::Near(i as i8) }),
    ];
    let v = -4000i16..4000;
    let val = prop_oneof![
        10 => (v.clone(), any::<u8>()).prop_map(|(v, g)| Val::Number(v, g)),
        2 => (v.clone(), any::<u8>()).prop_map(|(v, g)| Val::Decoy(v, g)),
        2 => (v, any::<u8>()).prop_map(|(v, g)| Val::Nested(v, g)),
        1 => any::<u8>().prop_map(Val::NoField),
        1 => any::<u8>().prop_map(Val::NotANumber),
        1 => any::<u8>().prop_map(Val::Garbage),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(i, g)| Val::Wild(i, g)),
    ];
    let key = prop_oneof![9 => (0u8..6).prop_map(Some), 1 => Just(None)];
    (key, ts, val).prop_map(|(key, ts, val)| Gen { key, ts, val })
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    let window = prop_oneof![
        Just(Win::None),
        prop_oneof![Just(1i64), Just(7), Just(100)].prop_map(Win::Tumbling),
        prop_oneof![Just((10i64, 10i64)), Just((25, 10)), Just((650, 10)), Just((100, 7))]
            .prop_map(|(s, h)| Win::Hopping(s, h)),
        prop_oneof![Just(1i64), Just(10), Just(50)].prop_map(Win::Session),
    ];
    let agg = prop_oneof![
        Just(Agg::Count),
        Just(Agg::Sum),
        Just(Agg::Min),
        Just(Agg::Max),
        Just(Agg::Mean),
        Just(Agg::Distinct),
    ];
    let key = prop_oneof![
        2 => Just(KeyKind::Record),
        1 => Just(KeyKind::JsonG),
        1 => Just(KeyKind::TimeBucket)
    ];
    let lateness = prop_oneof![Just(0i64), Just(5), Just(50), Just(1_000)];
    (window, agg, key, any::<bool>(), any::<bool>(), lateness, any::<bool>()).prop_map(
        |(window, agg, key, map_v, filter, lateness, drop_late)| Spec {
            window,
            agg,
            key,
            map_v: map_v || agg != Agg::Count,
            filter,
            lateness,
            drop_late,
        },
    )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let phase = || proptest::collection::vec(gen_strategy(), 0..120);
    (
        1u32..=4,
        [0usize..4, 0usize..4],
        prop_oneof![Just(1u64), Just(7), Just(40), Just(1_000_000)],
        prop_oneof![Just(1u64), Just(3), Just(11), Just(40), Just(1 << 30)],
        proptest::collection::vec(spec_strategy(), 1..=3),
        [phase(), phase(), phase()],
    )
        .prop_map(|(partitions, shards, checkpoint_every, task_records_min, specs, phases)| {
            Case { partitions, shards, checkpoint_every, task_records_min, specs, phases }
        })
}

/// Shard counts from 1 to the CPUs online (at most 4).
fn shard_count(pick: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    1 + pick % cpus
}

fn engine(dir: &std::path::Path, shards: usize, task_records_min: u64) -> Engine {
    // Segments of one block: the history is mostly sealed, so rebuilds and fresh views split
    // it into range tasks over the shards.
    Engine::builder()
        .data_dir(dir)
        .shards(shards)
        .io_memory_bytes(4 << 20)
        .log_config(LogConfig { segment_size_bytes_max: 4096, ..LogConfig::default() })
        .replay(ReplayConfig { task_records_min, tasks_per_shard: 3, ..ReplayConfig::default() })
        .build()
        .expect("engine")
}

pub fn def(spec: &Spec, revision: &str, checkpoint_every: u64) -> ViewDef {
    let window = match spec.window {
        Win::None => Window::None,
        Win::Tumbling(size_ms) => Window::Tumbling { size_ms },
        Win::Hopping(size_ms, hop_ms) => Window::Hopping { size_ms, hop_ms },
        Win::Session(gap_ms) => Window::Session { gap_ms },
    };
    let aggregate = match spec.agg {
        Agg::Count => Aggregate::Count,
        Agg::Sum => Aggregate::Sum,
        Agg::Min => Aggregate::Min,
        Agg::Max => Aggregate::Max,
        Agg::Mean => Aggregate::Mean,
        Agg::Distinct => Aggregate::DistinctCount,
    };
    let policy = if spec.drop_late { LatePolicy::Drop } else { LatePolicy::Update };
    let mut def = ViewDef::new(TOPIC)
        .revision(revision)
        .window(window)
        .aggregate(aggregate)
        .lateness(spec.lateness, policy)
        .checkpoint_every(checkpoint_every);
    if spec.map_v {
        def = def.map_json("v");
    }
    if spec.filter {
        def = def.filter(|r| model::keeps(r.value()));
    }
    match spec.key {
        KeyKind::Record => def,
        KeyKind::JsonG => def.key_by_json("g"),
        KeyKind::TimeBucket => def.key_by(|r, key| {
            key.extend_from_slice(&model::time_bucket(r.timestamp()));
            true
        }),
    }
}

/// Produces a phase's records (indexes continue across phases) and returns the acks.
fn produce(engine: &Engine, gens: &[Gen], first_index: usize) -> Vec<BatchAck> {
    let producer = engine.producer().with_durability(Durability::Written);
    let mut acks = Vec::new();
    for (chunk_index, chunk) in gens.chunks(17).enumerate() {
        let mut batch = ProducerBatch::new();
        for (i, g) in chunk.iter().enumerate() {
            let index = first_index + chunk_index * 17 + i;
            let key = g.key.map(|k| format!("k{k}").into_bytes());
            batch.push(key.as_deref(), &value(g.val), Some(timestamp(g.ts, index)));
        }
        acks.extend(producer.send_packed(TOPIC, batch).expect("produce"));
    }
    acks
}

/// Every record of every partition, in offset order, read back from the log.
fn log_records(engine: &Engine, partitions: u32) -> Vec<Vec<Rec>> {
    (0..partitions)
        .map(|p| {
            let end = engine.partition_offsets(TOPIC, p).expect("offsets").end_offset;
            let mut consumer = engine.consumer(TOPIC, p, Seek::Beginning).expect("consumer");
            let mut records = Vec::new();
            while (records.len() as u64) < end {
                let batch = consumer
                    .next_batch_timeout(WAIT)
                    .expect("read")
                    .expect("the log holds what was acknowledged");
                for r in batch.records() {
                    assert_eq!(r.offset(), records.len() as u64, "dense offsets");
                    records.push(Rec {
                        ts: r.timestamp(),
                        key: r.key().map(<[u8]>::to_vec),
                        value: r.value().to_vec(),
                    });
                }
            }
            records
        })
        .collect()
}

/// The served version of `view` against the model over the log now: rows and counters.
fn check(view: &ViewHandle, spec: &Spec, log: &[Vec<Rec>], stage: &str) -> Result<(), String> {
    let parts: Vec<(model::Rows, model::Counts)> =
        log.iter().map(|records| model::partition(spec, records)).collect();
    let progress = view.progress().map_err(|e| e.to_string())?;
    for (p, (_, want)) in parts.iter().enumerate() {
        let c = progress.partitions[p].counters;
        let got = model::Counts {
            consumed: c.consumed,
            applied: c.applied,
            time_out_of_range: c.time_out_of_range,
            filtered: c.filtered,
            no_key: c.no_key,
            no_field: c.no_field,
            not_a_number: c.not_a_number,
            not_json: c.not_json,
            late_dropped: c.late_dropped,
            late_updated: c.late_updated,
        };
        if got != *want {
            return Err(format!(
                "{stage}: partition {p} counters\n  engine {got:?}\n  model  {want:?}"
            ));
        }
    }
    let want = model::merge(spec, parts.into_iter().map(|(rows, _)| rows).collect());
    let rows = view.rows().map_err(|e| e.to_string())?;
    let got: BTreeMap<(Vec<u8>, i64), &kappa_engine::Row> =
        rows.iter().map(|r| ((r.key.clone(), r.window_start), r)).collect();
    if got.len() != rows.len() {
        return Err(format!("{stage}: duplicate rows"));
    }
    let keys_got: Vec<_> = got.keys().collect();
    let keys_want: Vec<_> = want.keys().collect();
    if keys_got != keys_want {
        return Err(format!(
            "{stage}: row keys differ\n  engine {:?}\n  model  {:?}",
            got.iter()
                .map(|(k, r)| (String::from_utf8_lossy(&k.0), k.1, r.window_end))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|(k, g)| (String::from_utf8_lossy(&k.0), k.1, g.end))
                .collect::<Vec<_>>()
        ));
    }
    for ((key, start), group) in &want {
        let row = got[&(key.clone(), *start)];
        let (value, registers) = model::result(spec.agg, &group.values);
        let key_text = String::from_utf8_lossy(key);
        if row.window_end != group.end {
            return Err(format!(
                "{stage}: {key_text}@{start}: end {} vs {}",
                row.window_end, group.end
            ));
        }
        match registers {
            Some(registers) => {
                let kappa_engine::operator::AggState::Hll(got_registers) = &row.state else {
                    return Err(format!("{stage}: {key_text}@{start}: not an HLL state"));
                };
                if *got_registers != registers || (row.value - value).abs() > value.abs() * 1e-12 {
                    return Err(format!(
                        "{stage}: {key_text}@{start}: HLL {} vs {value}",
                        row.value
                    ));
                }
            }
            None if row.value.to_bits() != value.to_bits() => {
                return Err(format!(
                    "{stage}: {key_text}@{start}: value {} vs {value} ({} values)",
                    row.value,
                    group.values.len()
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn run_case(case: &Case) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let err = |e: kappa_engine::Error| e.to_string();
    let mut index = 0;
    let names: Vec<String> = (0..case.specs.len()).map(|i| format!("v{i}")).collect();
    {
        let engine = engine(temp.path(), shard_count(case.shards[0]), case.task_records_min);
        engine.create_topic(TOPIC, TopicConfig::new(case.partitions)).map_err(err)?;
        // History first: the views replay it, then follow the tail.
        produce(&engine, &case.phases[0], index);
        index += case.phases[0].len();
        let mut views = Vec::new();
        for (spec, name) in case.specs.iter().zip(&names) {
            views.push(
                engine.create_view(name, def(spec, "a", case.checkpoint_every)).map_err(err)?,
            );
        }
        let acks = produce(&engine, &case.phases[1], index);
        index += case.phases[1].len();
        let log = log_records(&engine, case.partitions);
        for ((view, spec), name) in views.iter().zip(&case.specs).zip(&names) {
            view.wait_for(view.log_end().map_err(err)?, WAIT).map_err(err)?;
            view.wait_for(&acks, WAIT).map_err(err)?;
            check(view, spec, &log, &format!("{name} live"))?;
            // Replay into version 2 and swap: the same rows, byte for byte the same state.
            let rebuild =
                engine.rebuild_view(name, def(spec, "b", case.checkpoint_every)).map_err(err)?;
            rebuild.wait_swapped(WAIT).map_err(err)?;
            check(view, spec, &log, &format!("{name} rebuilt"))?;
            let live = view.digests_of(1).map_err(err)?;
            let replayed = view.digests_of(rebuild.version()).map_err(err)?;
            if live != replayed {
                return Err(format!("{name}: replayed digests {replayed:?} != live {live:?}"));
            }
        }
        engine.shutdown().map_err(err)?;
    }
    // Restart, maybe with another shard count: resume version 2 from its checkpoints, then more.
    let engine = engine(temp.path(), shard_count(case.shards[1]), case.task_records_min);
    let mut views = Vec::new();
    for (spec, name) in case.specs.iter().zip(&names) {
        let view = engine.create_view(name, def(spec, "b", case.checkpoint_every)).map_err(err)?;
        if view.version() != 2 {
            return Err(format!("{name}: resumed version {} instead of 2", view.version()));
        }
        view.wait_for(view.log_end().map_err(err)?, WAIT).map_err(err)?;
        views.push(view);
    }
    let log = log_records(&engine, case.partitions);
    for ((view, spec), name) in views.iter().zip(&case.specs).zip(&names) {
        check(view, spec, &log, &format!("{name} resumed"))?;
    }
    let acks = produce(&engine, &case.phases[2], index);
    let log = log_records(&engine, case.partitions);
    for (i, ((view, spec), name)) in views.iter().zip(&case.specs).zip(&names).enumerate() {
        view.wait_for(&acks, WAIT).map_err(err)?;
        check(view, spec, &log, &format!("{name} resumed then live"))?;
        let fresh = engine
            .create_view(&format!("fresh{i}"), def(spec, "c", case.checkpoint_every))
            .map_err(err)?;
        fresh.wait_for(fresh.log_end().map_err(err)?, WAIT).map_err(err)?;
        check(&fresh, spec, &log, &format!("{name} fresh after restart"))?;
        if fresh.digests_of(1).map_err(err)? != view.digests_of(2).map_err(err)? {
            return Err(format!("{name}: resumed state differs from a fresh replay"));
        }
    }
    engine.shutdown().map_err(err)?;
    Ok(())
}

/// Cases from `KAPPA_PROPTEST_CASES` (default 16).
pub fn cases() -> u32 {
    std::env::var("KAPPA_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

#[test]
fn views_equal_the_reference_model() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let seed = std::env::var("KAPPA_PROPTEST_SEED").ok().and_then(|v| v.parse::<u64>().ok());
    let seed = seed.unwrap_or_else(|| {
        // Printed so a failing run can be replayed.
        let t = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id())
    });
    eprintln!(
        "views_equal_the_reference_model: KAPPA_PROPTEST_SEED={seed}, {} cases",
        config.cases
    );
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&case_strategy(), |case| run_case(&case).map_err(TestCaseError::fail));
    if let Err(e) = result {
        let _ = std::io::stderr().flush();
        panic!("KAPPA_PROPTEST_SEED={seed}: {e}");
    }
}
