//! Views over HTTP: a rebuild returns at once and streams its progress until the swap; rollback
//! serves the old version again; versions are dropped; views created over HTTP come back after a
//! restart at the version they served; a view is deleted, and then its topic can be.

use std::io::BufRead;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Server, SENSORS};

fn load(server: &Server, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let lines: Vec<Value> = chunk
            .iter()
            .map(|i| json!({ "value": { "m": { "id": format!("s{}", i % 4), "v": i % 10 } }, "timestamp": i }))
            .collect();
        let a = server.ndjson("/v1/topics/sensors/records", &lines);
        assert_eq!(a.status, 200, "{a:?}");
    }
}

/// Follows a progress stream; returns (event, data) pairs.
fn events(server: &Server, path: &str) -> Vec<(String, Value)> {
    let response = super::agent().get(server.url(path)).call().expect("stream");
    assert_eq!(response.status(), 200);
    let mut out = Vec::new();
    let mut event = String::new();
    for line in std::io::BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.expect("line");
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            out.push((event.clone(), serde_json::from_str(d.trim()).expect("json data")));
        }
    }
    out
}

fn max_of(server: &Server, key: &str) -> Vec<f64> {
    let got = server.get(&format!("/v1/views/sums/get?key={key}"));
    got.body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["value"].as_f64().expect("v"))
        .collect()
}

#[test]
fn rebuild_streams_progress_then_rollback_and_drop() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), SENSORS, &[]);
    let n = 40_000;
    load(&server, n);
    let before = server.get("/v1/views/sums");
    assert_eq!(before.body["served_version"], 1);

    // Max instead of sum, 1 s windows: every window of s0 holds values 0, 4, 8 -> max 8.
    let definition = json!({
        "topic": "sensors", "key_field": "m.id", "value_field": "m.v", "aggregate": "max",
        "window": { "kind": "tumbling", "size_ms": 1000 }, "lateness_ms": 100000, "revision": "max-1s"
    });
    let started = server.post_json("/v1/views/sums/rebuild", &definition);
    assert_eq!(started.status, 202, "{started:?}");
    assert_eq!(started.body["version"], 2);
    let stream = started.body["stream"].as_str().expect("stream path").to_string();
    let seen = events(&server, &stream);
    let (last_event, last) = seen.last().expect("at least one event");
    assert_eq!(last_event, "done", "{seen:?}");
    assert_eq!(last["caught_up"], true);
    assert_eq!(last["served_version"], 2);
    assert_eq!(last["consumed"], json!(n));
    let consumed: Vec<u64> =
        seen.iter().map(|(_, d)| d["consumed"].as_u64().expect("consumed")).collect();
    assert!(consumed.windows(2).all(|w| w[0] <= w[1]), "{consumed:?}");
    assert!(seen
        .iter()
        .all(|(_, d)| d["fraction"].as_f64().is_some_and(|f| (0.0..=1.0).contains(&f))));
    // Polled progress agrees.
    let polled = server.get("/v1/views/sums/versions/2/progress");
    assert_eq!(
        (polled.body["caught_up"].clone(), polled.body["lag"].clone()),
        (json!(true), json!(0))
    );

    let maxes = max_of(&server, "s0");
    assert_eq!(maxes.len() as u64, n / 1000);
    assert!(maxes.iter().all(|m| *m == 8.0), "{maxes:?}");
    // Rollback: version 1 (sums) is served again, atomically, and still up to date.
    let back = server.post_json("/v1/views/sums/serve", &json!({ "version": 1 }));
    assert_eq!((back.status, back.body["previous"].clone()), (200, json!(2)), "{back:?}");
    let sums = max_of(&server, "s0");
    // Each 1 s window of s0 holds 250 records with values 0, 4, 8 cycling: about 1000.
    assert!(sums.iter().all(|s| (900.0..=1100.0).contains(s)), "{sums:?}");
    // Roll forward again, then drop version 1.
    assert_eq!(server.post_json("/v1/views/sums/serve", &json!({ "version": 2 })).status, 200);
    let dropped = server.delete("/v1/views/sums/versions/1");
    assert_eq!(dropped.status, 200, "{dropped:?}");
    let described = server.get("/v1/views/sums");
    assert_eq!(described.body["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(described.body["versions"][0]["definition"]["aggregate"], "max");
    let streamed_again = events(&server, "/v1/views/sums/versions/2/progress/stream");
    assert_eq!(streamed_again.len(), 1, "a caught-up version reports done at once");
    assert_eq!(server.get("/v1/views/sums/versions/1/progress").status, 404);
    assert!(server.stop().success());
}

#[test]
fn views_created_over_http_come_back_and_can_be_deleted() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, "[topics.sensors]\npartitions = 2\n").expect("config");
    let server = Server::start_with(temp.path(), &config, &[], None);
    load(&server, 2000);
    let definition = json!({ "topic": "sensors", "key_field": "m.id", "aggregate": "count",
        "filter": { "field": "m.v", "lt": 5 } });
    let created =
        server.post_json("/v1/views", &json!({ "name": "low", "definition": definition }));
    assert_eq!(created.status, 201, "{created:?}");
    let rebuilt = server.post_json(
        "/v1/views/low/rebuild",
        &json!({ "topic": "sensors", "key_field": "m.id", "aggregate": "count" }),
    );
    assert_eq!(rebuilt.status, 202);
    let done = events(&server, "/v1/views/low/versions/2/progress/stream");
    assert_eq!(done.last().map(|(e, _)| e.as_str()), Some("done"));
    let count = |s: &Server| s.get("/v1/views/low/get?key=s1").body["rows"][0]["value"].as_f64();
    assert_eq!(count(&server), Some(500.0));
    assert!(server.stop().success());

    // After a restart the served version (2, every record) resumes from its checkpoints.
    let server = Server::start_with(temp.path(), &config, &[], None);
    let described = server.get("/v1/views/low");
    assert_eq!(described.body["served_version"], 2, "{described:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&server) != Some(500.0) {
        assert!(std::time::Instant::now() < deadline, "the view did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deleting the topic is refused while the view reads it; after the view goes, it works.
    assert_eq!(server.delete("/v1/topics/sensors").status, 409);
    assert_eq!(server.delete("/v1/views/low").status, 200);
    assert_eq!(server.get("/v1/views/low").status, 404);
    assert_eq!(server.delete("/v1/topics/sensors").status, 200);
    assert_eq!(server.get("/v1/topics/sensors").status, 404);
    assert!(!server.data_dir.join("topics/sensors").exists());
    // A new topic of the same name starts empty.
    assert_eq!(
        server.post_json("/v1/topics", &json!({ "name": "sensors", "partitions": 2 })).status,
        201
    );
    assert_eq!(server.get("/v1/topics/sensors").body["records"], 0);
    assert!(server.stop().success());
    // And the deleted view stays deleted after a restart (the config does not declare it).
    let server = Server::start_with(temp.path(), &config, &[], None);
    assert_eq!(server.get("/v1/views/low").status, 404);
    assert!(server.stop().success());
}
