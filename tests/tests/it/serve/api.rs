//! The HTTP API: records in and out, view queries against a reference computed here, bad input
//! refused with the field named, auth off loopback, and the connection and size limits.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Server, SENSORS};

/// Record `i` of the workload: id `s{i%7}`, value `i%100`, event time `i*37` ms. The note holds
/// the field names as text, so a text search for `"v":` would find the wrong number.
fn record(i: u64) -> Value {
    json!({
        "key": format!("k{}", i % 5),
        "value": { "note": "\"v\": 999, \"id\": \"bogus\"", "m": { "id": format!("s{}", i % 7), "v": i % 100 } },
        "timestamp": i * 37,
        "headers": { "n": i.to_string() },
    })
}

#[test]
fn produce_and_query_through_http_match_a_reference() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), SENSORS, &[]);
    let n = 3000u64;
    // Half as NDJSON at `synced`, half as a JSON array at `written`.
    let first: Vec<Value> = (0..n / 2).map(record).collect();
    let a = server.ndjson("/v1/topics/sensors/records?durability=synced&per_record=true", &first);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["count"], n / 2);
    assert_eq!(a.body["records"].as_array().map(Vec::len), Some((n / 2) as usize));
    let second: Vec<Value> = (n / 2..n).map(record).collect();
    let b =
        server.post_json("/v1/topics/sensors/records?durability=written", &Value::Array(second));
    assert_eq!(b.status, 200, "{b:?}");

    // Every record is where the per-record answer said, with its bytes, key and headers.
    for (i, at) in a.body["records"].as_array().expect("records").iter().enumerate().step_by(97) {
        let (p, o) = (at["partition"].as_u64().expect("p"), at["offset"].as_u64().expect("o"));
        let got = server
            .get(&format!("/v1/topics/sensors/partitions/{p}/records?offset={o}&max_records=1"));
        assert_eq!(got.status, 200, "{got:?}");
        let r = &got.body["records"][0];
        let sent = record(i as u64);
        assert_eq!(r["key"], sent["key"]);
        assert_eq!(
            serde_json::from_str::<Value>(r["value"].as_str().expect("utf-8")).expect("json"),
            sent["value"]
        );
        assert_eq!(r["timestamp"], sent["timestamp"]);
        assert_eq!(r["headers"]["n"], json!(i.to_string()));
    }
    // Reading every partition from the beginning gives every record exactly once.
    let mut seen = 0;
    for p in 0..3 {
        let mut offset = 0;
        loop {
            let got = server.get(&format!(
                "/v1/topics/sensors/partitions/{p}/records?offset={offset}&max_records=500"
            ));
            assert_eq!(got.status, 200, "{got:?}");
            let records = got.body["records"].as_array().expect("records").len();
            if records == 0 {
                break;
            }
            seen += records;
            offset = got.body["next_offset"].as_u64().expect("next");
        }
    }
    assert_eq!(seen as u64, n);

    // The view equals sums computed here, per id and 1 s window.
    let mut reference: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for i in 0..n {
        *reference.entry((format!("s{}", i % 7), (i * 37 / 1000 * 1000) as i64)).or_default() +=
            (i % 100) as f64;
    }
    // The view follows the tail: wait until it folded everything in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = server.get("/v1/views/sums");
        if v.body["versions"][0]["consumed"] == json!(n) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "view never caught up: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in 0..7 {
        let got = server.get(&format!("/v1/views/sums/get?key=s{id}"));
        assert_eq!(got.status, 200, "{got:?}");
        let rows = got.body["rows"].as_array().expect("rows");
        let want: Vec<(i64, f64)> = reference
            .iter()
            .filter(|((k, _), _)| *k == format!("s{id}"))
            .map(|((_, w), v)| (*w, *v))
            .collect();
        let have: Vec<(i64, f64)> = rows
            .iter()
            .map(|r| {
                (r["window_start"].as_i64().expect("start"), r["value"].as_f64().expect("value"))
            })
            .collect();
        assert_eq!(have, want, "key s{id}");
        // One window by its start, and a windows range.
        let (w, v) = want[3];
        let one = server.get(&format!("/v1/views/sums/get?key=s{id}&window_start={w}"));
        assert_eq!(one.body["rows"][0]["value"].as_f64(), Some(v));
        let some =
            server.get(&format!("/v1/views/sums/windows?key=s{id}&from_ms={w}&to_ms={}", w + 2000));
        assert_eq!(some.body["rows"].as_array().map(Vec::len), Some(2));
    }
    let range = server.get("/v1/views/sums/range?from=s2&to=s4&limit=5");
    assert_eq!(range.body["truncated"], json!(true));
    assert!(range.body["rows"].as_array().expect("rows").iter().all(|r| r["key"] == "s2"));

    // Metrics and status reflect it.
    let metrics = server
        .agent
        .get(server.url("/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("text");
    let end_offsets: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("kappa_partition_end_offset{topic=\"sensors\""))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("value") as u64)
        .sum();
    assert_eq!(end_offsets, n, "{metrics}");
    for name in [
        "kappa_view_lag_records",
        "kappa_shard_append_ack_latency_seconds_bucket",
        "kappa_shard_fsync_latency_seconds_count",
        "kappa_view_replay_rate_records_per_second",
        "kappa_view_eta_seconds",
        "kappa_shard_request_queue_depth",
        "kappa_http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "no {name} in /metrics");
    }
    assert!(metrics.trim_end().ends_with("# EOF"));
    let status = server.get("/v1/status");
    // The Kafka listener's `__consumer_offsets` is listed too (first, by name).
    let sensors = status.body["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|t| t["name"] == json!("sensors")))
        .unwrap_or_else(|| panic!("no sensors topic in /v1/status: {}", status.body));
    assert_eq!(sensors["records"], json!(n));
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/ready").status, 200);
    assert!(server.stop().success());
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!("{SENSORS}\n[http]\nmax_body_bytes = 20000\nmax_batch_records = 10\n");
    let server = Server::start(temp.path(), &config, &[]);
    let nd = "application/x-ndjson";
    let cases: Vec<(super::Answer, u16, &str)> = vec![
        (server.post("/v1/topics/nope/records", nd, b"{\"value\":\"x\"}\n"), 404, "topic"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"value\":\"x\"}\n{\"value\":\n"), 400, "value"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"key\":\"k\"}\n"), 400, "value"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"value\":\"x\",\"timestamp\":\"soon\"}\n"), 400, "timestamp"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"value\":\"x\",\"extra\":1}\n"), 400, "extra"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"value_b64\":\"%%%\"}\n"), 400, "value_b64"),
        (server.post("/v1/topics/sensors/records", nd, b"{\"value\":\"x\",\"headers\":{\"h\":5}}\n"), 400, "headers.h"),
        (server.post("/v1/topics/sensors/records", "application/json", b"[{\"value\":\"x\"},{\"key\":1,\"value\":\"y\"}]"), 400, "key"),
        (server.post("/v1/topics/sensors/records?durability=maybe", nd, b"{\"value\":\"x\"}\n"), 400, "durability"),
        (server.post("/v1/topics/sensors/records?durabilty=synced", nd, b"{\"value\":\"x\"}\n"), 400, "durabilty"),
        (server.post("/v1/topics/sensors/records", "text/plain", b"x"), 415, "content-type"),
        (server.post("/v1/topics/sensors/records", nd, b"\n\n"), 400, "records"),
        (server.post("/v1/topics/sensors/records", nd, &vec![b'x'; 30_000]), 413, "body"),
        (server.post("/v1/topics/sensors/records", nd, "{\"value\":\"x\"}\n".repeat(11).as_bytes()), 413, "records"),
        (server.get("/v1/topics/sensors/partitions/x/records"), 400, "partition"),
        (server.get("/v1/topics/sensors/partitions/7/records"), 404, "partition"),
        (server.get("/v1/topics/sensors/partitions/0/records?offset=99"), 416, "offset"),
        (server.get("/v1/topics/sensors/partitions/0/records?offset=0&from=end"), 400, "offset"),
        (server.get("/v1/topics/sensors/partitions/0/records?max_records=0"), 400, "max_records"),
        (server.get("/v1/topics/sensors/partitions/0/records?wait_ms=999999"), 400, "wait_ms"),
        (server.post_json("/v1/topics", &json!({"name": "t", "partitions": 0})), 400, "partitions"),
        (server.post_json("/v1/topics", &json!({"name": "bad/name", "partitions": 1})), 400, "name"),
        (server.post_json("/v1/topics", &json!({"name": "t"})), 400, "partitions"),
        (server.post_json("/v1/topics", &json!({"name": "sensors", "partitions": 1})), 409, "name"),
        (server.post_json("/v1/views", &json!({"name": "v", "definition": {"topic": "sensors", "window": {"kind": "tumbling"}}})), 400, "definition.window.size_ms"),
        (server.post_json("/v1/views", &json!({"name": "v", "definition": {"topic": "sensors", "aggregate": "avg"}})), 400, "definition.aggregate"),
        (server.post_json("/v1/views", &json!({"name": "v", "definition": {"topic": "nope"}})), 404, "topic"),
        (server.post_json("/v1/views", &json!({"name": "sums", "definition": {"topic": "sensors"}})), 409, "name"),
        (server.get("/v1/views/nope"), 404, "view"),
        (server.get("/v1/views/sums/get"), 400, "key"),
        (server.get("/v1/views/sums/windows?key=a&from_ms=5&to_ms=1"), 400, "to_ms"),
        (server.post_json("/v1/views/sums/rebuild", &json!({"topic": "other"})), 400, "topic"),
        (server.post_json("/v1/views/sums/serve", &json!({"version": 9})), 404, "version"),
        (server.delete("/v1/views/sums/versions/1"), 409, "version"),
        (server.delete("/v1/topics/sensors"), 409, "topic"),
        (server.get("/v1/nothing"), 404, "path"),
    ];
    for (i, (answer, status, field)) in cases.iter().enumerate() {
        assert_eq!(answer.status, *status, "case {i}: {answer:?}");
        assert_eq!(answer.field(), *field, "case {i}: {answer:?}");
        assert!(answer.body["error"].as_str().is_some_and(|e| !e.is_empty()), "case {i}");
    }
    // The NDJSON error names the line too.
    let line = server.post(
        "/v1/topics/sensors/records",
        nd,
        b"{\"value\":\"a\"}\n{\"value\":\"b\"}\n{\"vaule\":\"c\"}\n",
    );
    assert_eq!((line.status, line.field(), line.body["line"].as_u64()), (400, "vaule", Some(3)));
    // Nothing of a refused batch was written.
    let end = server.get("/v1/topics/sensors");
    assert_eq!(end.body["records"], json!(0), "{end:?}");
    assert!(server.stop().success());
}

#[test]
fn a_token_is_required_off_loopback() {
    let temp = tempfile::tempdir().expect("tempdir");
    // Without a token, a wildcard bind is refused before anything starts.
    let (code, _, stderr) = super::kappa(
        &[
            "serve",
            "--data-dir",
            &temp.path().join("d").display().to_string(),
            "--http-addr",
            "0.0.0.0:0",
        ],
        b"",
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--http-addr") && stderr.contains("token"), "{stderr}");
    assert!(!temp.path().join("d").exists(), "the data dir was touched");

    let token = "an-adequately-long-token";
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, format!("{SENSORS}\n[http]\ntoken = \"{token}\"\n")).expect("config");
    let mut server =
        super::Server::start_with(temp.path(), &config, &["--http-addr", "0.0.0.0:0"], None);
    let denied = server.get("/v1/topics");
    assert_eq!((denied.status, denied.field()), (401, "authorization"));
    assert_eq!(server.get("/metrics").status, 401);
    assert_eq!(
        server
            .post("/v1/topics/sensors/records", "application/x-ndjson", b"{\"value\":\"x\"}\n")
            .status,
        401
    );
    server.token = Some("wrong-token-of-the-same-len".into());
    assert_eq!(server.get("/v1/topics").status, 401);
    server.token = None;
    assert_eq!(server.get("/health").status, 200, "health needs no token");
    assert_eq!(server.get("/ready").status, 200);
    assert_eq!(server.get("/").status, 200, "the page shell holds no data");
    server.token = Some(token.into());
    assert_eq!(server.get("/v1/topics").status, 200);
    assert_eq!(
        server
            .post("/v1/topics/sensors/records", "application/x-ndjson", b"{\"value\":\"x\"}\n")
            .status,
        200
    );
    assert!(server.stop().success());
}

#[test]
fn connections_are_bounded_and_slow_clients_cut_off() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!("{SENSORS}\n[http]\nmax_connections = 2\nheader_timeout_ms = 500\n");
    let server = Server::start(temp.path(), &config, &[]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Two idle connections hold both permits; the third gets a 503 and is closed.
    let held: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(&addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = std::net::TcpStream::connect(&addr).expect("connect");
    third.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
    let mut reply = String::new();
    third.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = third.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("too many connections"), "{reply}");
    // A client that never finishes its headers is cut off after the header timeout, and its
    // permit comes back.
    let mut slow = held.into_iter().next().expect("one");
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(9), "the slow client was not cut off");
    // The other held connection also timed out (it never sent a request): a new one works.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(server.get("/health").status, 200);
    assert!(server.stop().success());
}

#[test]
fn values_keep_their_bytes_strings_escapes_json_and_binary() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let lines = [
        json!({ "value": "plain" }),
        json!({ "value": "line\n\"quoted\" \\ é \u{1F600}" }),
        json!({ "value": { "a": [1, 2.5, "x"] } }),
        json!({ "value": 42 }),
        json!({ "key_b64": "AAEC/w==", "value_b64": "/wABAg==" }),
    ];
    assert_eq!(server.ndjson("/v1/topics/t/records", &lines).status, 200);
    let got = server.get("/v1/topics/t/partitions/0/records?from=beginning");
    let records = got.body["records"].as_array().expect("records");
    assert_eq!(records[0]["value"], "plain");
    assert_eq!(records[1]["value"], "line\n\"quoted\" \\ é \u{1F600}");
    assert_eq!(records[2]["value"], r#"{"a":[1,2.5,"x"]}"#);
    assert_eq!(records[3]["value"], "42");
    assert_eq!(
        (records[4]["key_b64"].as_str(), records[4]["value_b64"].as_str()),
        (Some("AAEC/w=="), Some("/wABAg=="))
    );
    assert!(server.stop().success());
}
