//! Real Kafka clients against `kappa serve`: kcat (librdkafka, Debian), confluent-kafka and
//! kafka-python (pip). Ignored by default: a newcomer may not have them. `.ci/run` installs them
//! and runs these with `--ignored`; without a tool they fail, never pass by skipping.
//!
//! The Python clients run small scripts (below) that print JSON; the checks happen here, against
//! our own reading of the data (a raw Kafka fetch, the HTTP API) and our own murmur2 and CRC32.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::*;
use crate::serve::Server;

fn kcat() -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/kcat");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!(
        "kcat is not installed: this test needs the Debian package `kcat` (.ci/run installs it)"
    );
}

fn python(module: &str) -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import {module}: this test needs `pip install confluent-kafka \
         kafka-python[crc32c,lz4,snappy,zstd]` (.ci/run installs them)"
    );
    "python3"
}

/// Runs a command to completion with `stdin`; panics with its output when it fails.
fn run(program: &str, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The last line of a script's output, as JSON.
fn json_result(output: &str) -> Value {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, librdkafka's `murmur2_random`).
fn murmur2(data: &[u8]) -> u32 {
    let m: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> 24;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h
}

/// CRC-32 (IEEE, as zlib): librdkafka's `consistent_random` partitioner.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn murmur2_and_crc32_match_published_values() {
    // Values from Kafka's own `UtilsTest.testMurmur2` and zlib's crc32.
    assert_eq!(murmur2(b"21") as i32, -973932308);
    assert_eq!(murmur2(b"foobar") as i32, -790332482);
    assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
    assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
    assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
    assert_eq!(murmur2(b"abc") as i32, 479470107);
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}

fn kafka_fetch_all(server: &Server, topic: &str, partition: i32) -> Vec<Seen> {
    let mut c = connect(server);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let f = fetch(&mut c, 12, topic, partition, offset, 0, 1, 1 << 20);
        assert_eq!(f.error_code, 0);
        let got: Vec<Seen> = decode(&f.records).into_iter().filter(|r| r.0 >= offset).collect();
        match got.last() {
            None => return out,
            Some(last) => offset = last.0 + 1,
        }
        out.extend(got);
    }
}

#[test]
#[ignore = "needs kcat / python kafka clients: run by .ci/run"]
fn kcat_produces_and_consumes_keys_codecs_offsets_and_groups() {
    let kcat = kcat();
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), FAST_GROUPS, &[]);
    let bs = server.kafka.clone().expect("kafka");

    // Keyed records, produced and consumed back; the same bytes over HTTP.
    let input: String = (0..50).map(|i| format!("key-{}:value {i} ü\n", i % 6)).collect();
    run(&kcat, &["-b", &bs, "-P", "-t", "keyed", "-p", "0", "-K", ":"], input.as_bytes());
    let out = run(
        &kcat,
        &["-b", &bs, "-C", "-t", "keyed", "-o", "beginning", "-e", "-q", "-f", "%k|%s|%o\n"],
        b"",
    );
    let expected: String = (0..50).map(|i| format!("key-{}|value {i} ü|{i}\n", i % 6)).collect();
    assert_eq!(out, expected);
    let http = server.get("/v1/topics/keyed/partitions/0/records?offset=0&max_records=100");
    let records = http.body["records"].as_array().expect("records");
    assert_eq!(records.len(), 50);
    assert_eq!(records[7]["key"], "key-1");
    assert_eq!(records[7]["value"], "value 7 ü");

    // Every codec.
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        let lines: String =
            (0..200).map(|i| format!("{codec} record {i} {}\n", "z".repeat(i % 50))).collect();
        run(
            &kcat,
            &["-b", &bs, "-P", "-t", &topic, "-z", codec, "-X", "linger.ms=50"],
            lines.as_bytes(),
        );
        let out = run(
            &kcat,
            &["-b", &bs, "-C", "-t", &topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
            b"",
        );
        assert_eq!(out, lines, "{codec}");
        let seen = kafka_fetch_all(&server, &topic, 0);
        assert_eq!(seen.len(), 200, "{codec}: stored decompressed, every record once");
    }

    // From an offset in the middle of a batch: the broker returns the whole batch, the client
    // starts at the offset it asked for.
    let lines: String = (0..20).map(|i| format!("m{i}\n")).collect();
    run(&kcat, &["-b", &bs, "-P", "-t", "mid", "-X", "linger.ms=200"], lines.as_bytes());
    let mut c = connect(&server);
    let f = fetch(&mut c, 12, "mid", 0, 0, 0, 1, 1 << 20);
    let bases = batch_bases(&f.records);
    assert!(bases.len() < 20, "kcat batched the records: {bases:?}");
    let out =
        run(&kcat, &["-b", &bs, "-C", "-t", "mid", "-o", "7", "-e", "-q", "-f", "%o:%s\n"], b"");
    let expected: String = (7..20).map(|i| format!("{i}:m{i}\n")).collect();
    assert_eq!(out, expected);

    // A consumer group: the first run reads everything and commits, the second only what came
    // after (its committed offsets), also after a restart.
    let topic = "grouped";
    run(
        &kcat,
        &["-b", &bs, "-P", "-t", topic],
        (0..30).map(|i| format!("g{i}\n")).collect::<String>().as_bytes(),
    );
    let group = |server: &Server| {
        let bs = server.kafka.clone().expect("kafka");
        run(
            &kcat,
            &[
                "-b",
                &bs,
                "-G",
                "kcat-group",
                topic,
                "-e",
                "-q",
                "-f",
                "%s\n",
                "-X",
                "auto.offset.reset=earliest",
                "-X",
                "session.timeout.ms=6000",
            ],
            b"",
        )
    };
    let first = group(&server);
    assert_eq!(first.lines().count(), 30, "{first}");
    run(&kcat, &["-b", &bs, "-P", "-t", topic], b"later-1\nlater-2\n");
    assert_eq!(group(&server), "later-1\nlater-2\n");
    assert!(server.stop().success());
    let server = Server::start(temp.path(), FAST_GROUPS, &[]);
    let bs = server.kafka.clone().expect("kafka");
    run(&kcat, &["-b", &bs, "-P", "-t", topic], b"after-restart\n");
    assert_eq!(group(&server), "after-restart\n");
}

const CONFLUENT_PRODUCE: &str = r#"
import json, sys
from confluent_kafka import Producer
bs, topic, partitioner, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
p = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "acks": "all",
              "partitioner": partitioner, "linger.ms": 5, "max.in.flight.requests.per.connection": 5})
delivered, errors = [], []
def report(err, msg):
    if err is not None:
        errors.append(str(err))
    else:
        delivered.append([msg.key().decode(), msg.partition(), msg.offset()])
for i in range(n):
    p.produce(topic, key=("user-%d" % (i * 7919 % 1000)).encode(), value=("event %d" % i).encode(), on_delivery=report)
    if i % 500 == 0:
        p.poll(0)
p.flush(60)
print(json.dumps({"delivered": delivered, "errors": errors}))
"#;

#[test]
#[ignore = "needs kcat / python kafka clients: run by .ci/run"]
fn confluent_kafka_idempotent_producer_and_its_partitioners() {
    let python = python("confluent_kafka");
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        temp.path(),
        "[topics.cf]\npartitions = 6\n[topics.crc]\npartitions = 5\n",
        &[],
    );
    let bs = server.kafka.clone().expect("kafka");
    let n = 3000;
    for (topic, partitioner, partitions) in
        [("cf", "murmur2_random", 6u32), ("crc", "consistent_random", 5)]
    {
        let out =
            run(python, &["-c", CONFLUENT_PRODUCE, &bs, topic, partitioner, &n.to_string()], b"");
        let result = json_result(&out);
        assert_eq!(result["errors"], serde_json::json!([]), "{topic}");
        let delivered = result["delivered"].as_array().expect("delivered");
        assert_eq!(delivered.len(), n, "{topic}");
        let mut places = BTreeSet::new();
        for d in delivered {
            let key = d[0].as_str().expect("key");
            let partition = d[1].as_u64().expect("partition") as u32;
            let want = match partitioner {
                "murmur2_random" => (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions,
                _ => crc32(key.as_bytes()) % partitions,
            };
            assert_eq!(partition, want, "{partitioner}: key {key}");
            assert!(
                places.insert((partition, d[2].as_i64().expect("offset"))),
                "an offset acknowledged twice"
            );
        }
        // Exactly the records sent, each once, in each partition's order.
        let mut stored = 0;
        for p in 0..partitions as i32 {
            let seen = kafka_fetch_all(&server, topic, p);
            let offsets: Vec<i64> = seen.iter().map(|r| r.0).collect();
            assert_eq!(offsets, (0..seen.len() as i64).collect::<Vec<_>>());
            let events: Vec<u64> = seen
                .iter()
                .map(|r| {
                    String::from_utf8_lossy(r.3.as_deref().expect("value"))["event ".len()..]
                        .parse()
                        .expect("n")
                })
                .collect();
            assert!(events.windows(2).all(|w| w[0] < w[1]), "partition {p} out of order");
            stored += seen.len();
        }
        assert_eq!(stored, n, "{topic}: no duplicates, nothing lost");
    }
}

const CONFLUENT_GROUP: &str = r#"
import json, sys, threading, time
from confluent_kafka import Consumer, KafkaException
bs, topic, members, leave_after, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lock = threading.Lock()
consumed, assignments, errors = [], {}, []
stop = threading.Event()
def member(i):
    c = Consumer({"bootstrap.servers": bs, "group.id": "trio", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 3000, "heartbeat.interval.ms": 300,
                  "client.id": "member-%d" % i})
    def on_assign(consumer, partitions):
        with lock:
            assignments.setdefault(i, []).append(sorted(p.partition for p in partitions))
    c.subscribe([topic], on_assign=on_assign)
    mine = 0
    while not stop.is_set():
        # The last member leaves once it has been a full member of the group (all of them
        # joined; the topic has 6 partitions, so it held 6 / members) and has read `leave_after`
        # records, or the group as a whole has read three times that (fetches need not be fair
        # to it, and the others must still have records left to read after the rebalance).
        full = any(isinstance(a, list) and 0 < len(a) * members <= 6 for a in assignments.get(i, []))
        if leave_after and i == members - 1 and full and \
                (mine >= leave_after or len(consumed) >= 3 * leave_after):
            break
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            errors.append(str(m.error()))
            continue
        try:
            c.commit(message=m, asynchronous=False)
        except KafkaException as e:
            continue  # not committed: whoever owns the partition next reads it again
        with lock:
            consumed.append([m.partition(), m.offset(), i])
            mine += 1
            if len(consumed) >= stop_after:
                stop.set()
    c.close()
    with lock:
        assignments.setdefault(i, []).append("closed")
threads = [threading.Thread(target=member, args=(i,)) for i in range(members)]
for t in threads:
    t.start()
deadline = time.time() + 120
while not stop.is_set() and time.time() < deadline:
    time.sleep(0.1)
    with lock:
        idle = len(consumed)
    time.sleep(3)
    with lock:
        if len(consumed) == idle and stop_after > 10**6:
            stop.set()
stop.set()
for t in threads:
    t.join()
print(json.dumps({"consumed": consumed, "assignments": {str(k): v for k, v in assignments.items()}, "errors": errors}))
"#;

#[test]
#[ignore = "needs kcat / python kafka clients: run by .ci/run"]
fn confluent_kafka_group_of_three_rebalances_and_resumes_after_a_restart() {
    let python = python("confluent_kafka");
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!("{FAST_GROUPS}[topics.trio]\npartitions = 6\n");
    let server = Server::start(temp.path(), &config, &[]);
    let mut c = connect(&server);
    let total = 1200i64;
    for p in 0..6 {
        let rows: Vec<Vec<u8>> = (0..total / 6).map(|i| format!("p{p}-{i}").into_bytes()).collect();
        let records: Vec<kappa_engine::storage::Record<'_>> =
            rows.iter().map(|v| kappa_engine::storage::Record::new(1, None, v)).collect();
        for chunk in records.chunks(50) {
            let batch = kappa_engine::kafka::client::record_batch(
                chunk,
                Default::default(),
                kappa_engine::kafka::client::Compression::None,
            );
            assert_eq!(produce(&mut c, 9, "trio", p, batch, 1).0, 0);
        }
    }
    let bs = server.kafka.clone().expect("kafka");
    // Three members; the third leaves after 100 records (or once the group read 300); the other
    // two go on to 800.
    let out = run(python, &["-c", CONFLUENT_GROUP, &bs, "trio", "3", "100", "800"], b"");
    let first = json_result(&out);
    let assignments = first["assignments"].as_object().expect("assignments");
    let sizes = |m: &str| -> Vec<usize> {
        assignments[m]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|a| a.as_array().map(Vec::len))
            .collect()
    };
    // Everyone got a share while three were in the group...
    for m in ["0", "1", "2"] {
        assert!(sizes(m).contains(&2), "member {m} never held 2 of 6 partitions: {first}");
    }
    // ... and after the third left, the two others split all six.
    assert!(
        sizes("0").contains(&3) && sizes("1").contains(&3),
        "no rebalance after the leave: {first}"
    );
    let seen_first: Vec<(i64, i64)> = first["consumed"]
        .as_array()
        .expect("consumed")
        .iter()
        .map(|r| (r[0].as_i64().expect("p"), r[1].as_i64().expect("o")))
        .collect();
    assert!(seen_first.len() >= 800);

    // A restart; a new member of the same group resumes from the committed offsets.
    drop(c);
    assert!(server.stop().success());
    let server = Server::start(temp.path(), &config, &[]);
    let bs = server.kafka.clone().expect("kafka");
    let out = run(python, &["-c", CONFLUENT_GROUP, &bs, "trio", "1", "0", "100000000"], b"");
    let second = json_result(&out);
    let seen_second: Vec<(i64, i64)> = second["consumed"]
        .as_array()
        .expect("consumed")
        .iter()
        .map(|r| (r[0].as_i64().expect("p"), r[1].as_i64().expect("o")))
        .collect();
    let a: BTreeSet<(i64, i64)> = seen_first.iter().copied().collect();
    let b: BTreeSet<(i64, i64)> = seen_second.iter().copied().collect();
    assert_eq!(
        a.len(),
        seen_first.len(),
        "a committed record was consumed twice before the restart"
    );
    assert!(a.is_disjoint(&b), "after the restart, committed records came again");
    let all: BTreeSet<(i64, i64)> = a.union(&b).copied().collect();
    let expected: BTreeSet<(i64, i64)> =
        (0..6).flat_map(|p| (0..total / 6).map(move |o| (p, o))).collect();
    assert_eq!(all, expected, "every record exactly once across both runs");
}

const KAFKA_PYTHON: &str = r#"
import json, sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
bs, phase = sys.argv[1], sys.argv[2]
out = {}
if phase == "one":
    p = KafkaProducer(bootstrap_servers=bs, compression_type="lz4", linger_ms=10)
    sent = []
    for i in range(300):
        key = ("k%d" % (i % 41)).encode()
        f = p.send("kp", key=key, value=("value-%d" % i).encode(), timestamp_ms=1_700_000_000_000 + i * 1000)
        sent.append((key.decode(), f))
    p.flush()
    out["sent"] = [[k, f.get(30).partition, f.get(30).offset] for k, f in sent]
    p.close()
    c = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, consumer_timeout_ms=3000)
    tp = TopicPartition("kp", 2)
    c.assign([tp])
    c.seek(tp, 5)
    out["seek"] = [[m.offset, m.value.decode()] for m in c]
    parts = [TopicPartition("kp", p) for p in range(4)]
    times = c.offsets_for_times({tp: 1_700_000_000_000 + 150_500 for tp in parts})
    out["times"] = {str(tp.partition): [v.offset, v.timestamp] if v else None for tp, v in times.items()}
    out["begin"] = {str(tp.partition): o for tp, o in c.beginning_offsets(parts).items()}
    out["end"] = {str(tp.partition): o for tp, o in c.end_offsets(parts).items()}
    c.close()
g = KafkaConsumer("kp", bootstrap_servers=bs, group_id="kpg", auto_offset_reset="earliest",
                  enable_auto_commit=False, consumer_timeout_ms=4000, session_timeout_ms=6000, heartbeat_interval_ms=500)
limit = 120 if phase == "one" else 10**9
got = []
for m in g:
    got.append([m.partition, m.offset])
    g.commit()
    if len(got) >= limit:
        break
g.close()
out["group"] = got
print(json.dumps(out))
"#;

#[test]
#[ignore = "needs kcat / python kafka clients: run by .ci/run"]
fn kafka_python_assign_seek_timestamps_and_group_resume() {
    let python = python("kafka");
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!("{FAST_GROUPS}[topics.kp]\npartitions = 4\n");
    let server = Server::start(temp.path(), &config, &[]);
    let bs = server.kafka.clone().expect("kafka");
    let one = json_result(&run(python, &["-c", KAFKA_PYTHON, &bs, "one"], b""));

    // kafka-python's default partitioner is murmur2.
    let mut per_partition: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    for s in one["sent"].as_array().expect("sent") {
        let key = s[0].as_str().expect("key").to_string();
        let p = s[1].as_i64().expect("p");
        assert_eq!(p as u32, (murmur2(key.as_bytes()) & 0x7fff_ffff) % 4, "key {key}");
        per_partition.entry(p).or_default().push((key, s[2].as_i64().expect("o")));
    }
    // assign + seek(5) on partition 2: offsets 5.. of what was sent there.
    let sent2 = &per_partition[&2];
    let seek: Vec<i64> =
        one["seek"].as_array().expect("seek").iter().map(|r| r[0].as_i64().expect("o")).collect();
    assert_eq!(seek, (5..sent2.len() as i64).collect::<Vec<_>>());
    // offsets_for_times: the first record at or after the time, per partition, from the records
    // we know were sent there (record i has time base + i s; partition offsets follow send order).
    let sends: Vec<(i64, i64)> = one["sent"]
        .as_array()
        .expect("sent")
        .iter()
        .map(|s| (s[1].as_i64().expect("p"), s[2].as_i64().expect("o")))
        .collect();
    for p in 0..4i64 {
        let first_after = sends
            .iter()
            .enumerate()
            .find(|(i, (pp, _))| *pp == p && (*i as i64) * 1000 >= 150_500)
            .map(|(i, (_, o))| (*o, 1_700_000_000_000 + i as i64 * 1000));
        let got = &one["times"][p.to_string()];
        match first_after {
            Some((o, ts)) => {
                assert_eq!((got[0].as_i64(), got[1].as_i64()), (Some(o), Some(ts)), "partition {p}")
            }
            None => assert!(got.is_null()),
        }
        assert_eq!(one["begin"][p.to_string()], 0);
        assert_eq!(one["end"][p.to_string()].as_i64(), Some(per_partition[&p].len() as i64));
    }
    let first: BTreeSet<(i64, i64)> = one["group"]
        .as_array()
        .expect("group")
        .iter()
        .map(|r| (r[0].as_i64().expect("p"), r[1].as_i64().expect("o")))
        .collect();
    assert_eq!(first.len(), 120);

    // Restart; the group resumes after its committed offsets.
    assert!(server.stop().success());
    let server = Server::start(temp.path(), &config, &[]);
    let bs = server.kafka.clone().expect("kafka");
    let two = json_result(&run(python, &["-c", KAFKA_PYTHON, &bs, "two"], b""));
    let second: BTreeSet<(i64, i64)> = two["group"]
        .as_array()
        .expect("group")
        .iter()
        .map(|r| (r[0].as_i64().expect("p"), r[1].as_i64().expect("o")))
        .collect();
    assert!(first.is_disjoint(&second), "committed records came again after the restart");
    assert_eq!(first.len() + second.len(), 300, "every record exactly once");
}
