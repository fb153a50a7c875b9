//! The process: config errors (exit 2, key/line/column, data untouched), SIGTERM drains in-flight
//! requests and exits 0, a second signal exits at once, and SIGKILL under a running HTTP load
//! loses nothing acknowledged at `synced`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::{kappa, Server, SENSORS};

#[test]
fn config_errors_name_key_line_and_column_and_exit_2() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let data = data.display().to_string();
    let cases = [
        ("[engine]\nshards = \"two\"\n", "engine.shards", 2, 10),
        ("[http]\nadress = \"127.0.0.1:1\"\n", "http.adress", 2, 1),
        ("[topics.t]\npartitions = 0\n", "topics.t.partitions", 2, 14),
        (
            "[topics.t]\npartitions = 1\n\n[views.v]\ntopic = \"t\"\naggregate = \"sum\"\n",
            "views.v.value_field",
            4,
            8,
        ),
        (
            "[topics.t]\npartitions = 1\n[views.v]\ntopic = \"t\"\nwindow = { kind = \"hopping\", size_ms = 10 }\n",
            "views.v.window.hop_ms",
            5,
            10,
        ),
    ];
    for (text, key, line, column) in cases {
        let config = temp.path().join("bad.toml");
        std::fs::write(&config, text).expect("write");
        let config = config.display().to_string();
        for check in [false, true] {
            let mut args = vec!["serve", "--config", &config, "--data-dir", &data];
            if check {
                args.push("--check-config");
            }
            let (code, _, stderr) = kappa(&args, b"", &[]);
            assert_eq!(code, 2, "{text}: {stderr}");
            assert!(stderr.contains(&format!("key `{key}`")), "{text}: {stderr}");
            assert!(
                stderr.contains(&format!("line {line}"))
                    && stderr.contains(&format!("column {column}")),
                "{text}: wanted line {line} column {column}: {stderr}"
            );
            assert!(!temp.path().join("data").exists(), "the data dir was touched: {text}");
        }
    }
    // A flag is checked like a key.
    let (code, _, stderr) =
        kappa(&["serve", "--data-dir", &data, "--kafka-addr", "nowhere"], b"", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--kafka-addr"), "{stderr}");
    // The example config in the repository is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kappa.toml");
    let (code, stdout, stderr) = kappa(&["serve", "--config", example, "--check-config"], b"", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config OK"), "{stdout}");
    // A topic that exists with another partition count is a config error too (exit 2).
    let good = temp.path().join("good.toml");
    std::fs::write(&good, "[topics.t]\npartitions = 2\n").expect("write");
    let server = Server::start_with(temp.path(), &good, &[], None);
    assert!(server.stop().success());
    std::fs::write(&good, "# changed\n[topics.t]\npartitions = 3\n").expect("write");
    let (code, _, stderr) = kappa(
        &[
            "serve",
            "--config",
            &good.display().to_string(),
            "--data-dir",
            &data,
            "--http-addr",
            "127.0.0.1:0",
        ],
        b"",
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("key `topics.t.partitions`") && stderr.contains("line 3"), "{stderr}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let temp = tempfile::tempdir().expect("tempdir");
    // Every append waits 1.5 s on its shard, so the request below is in flight at the signal.
    let config = format!("{SENSORS}\n[debug]\nappend_delay_ms = 1500\n");
    let mut server = Server::start(temp.path(), &config, &[]);
    let url = server.url("/v1/topics/sensors/records?durability=synced");
    let in_flight = std::thread::spawn(move || {
        super::agent()
            .post(url)
            .header("content-type", "application/x-ndjson")
            .send(&b"{\"key\":\"k\",\"value\":\"drained\"}\n"[..])
            .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()))
    });
    std::thread::sleep(Duration::from_millis(400));
    #[allow(clippy::disallowed_methods)]
    let signalled = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    // Not ready any more, then not accepting.
    std::thread::sleep(Duration::from_millis(200));
    let refused = std::net::TcpStream::connect(server.base.trim_start_matches("http://"));
    assert!(refused.is_err(), "a new connection was accepted after SIGTERM");
    let (status, body) = in_flight.join().expect("client").expect("the in-flight request finished");
    assert_eq!(status, 200, "{body}");
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", server.log());
    assert!(signalled.elapsed() < Duration::from_secs(30));
    let log = server.log();
    assert!(log.contains("drained=true") && log.contains("stopped cleanly"), "{log}");
    // The acknowledged record is there after a restart.
    let server = Server::start_with(temp.path(), &server.config.clone(), &[], None);
    let found = (0..3).any(|p| {
        let got = server.get(&format!("/v1/topics/sensors/partitions/{p}/records?from=beginning"));
        got.body["records"].as_array().is_some_and(|r| r.iter().any(|r| r["value"] == "drained"))
    });
    assert!(found, "the drained record is gone");
    drop(server);
}

#[test]
fn a_second_signal_exits_at_once() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "{SENSORS}\n[debug]\nappend_delay_ms = 5000\n[http]\nshutdown_timeout_ms = 60000\n"
    );
    let mut server = Server::start(temp.path(), &config, &[]);
    let url = server.url("/v1/topics/sensors/records");
    let _slow = std::thread::spawn(move || {
        let _ = super::agent()
            .post(url)
            .header("content-type", "application/x-ndjson")
            .send(&b"{\"value\":\"x\"}\n"[..]);
    });
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.child.try_wait().expect("wait").is_none(), "still draining");
    server.signal(libc::SIGINT);
    let status = server.wait(Duration::from_secs(3));
    assert_eq!(status.code(), Some(130), "{}", server.log());
}

/// Records acknowledged at `synced` over HTTP survive SIGKILL at a random moment of the load.
#[test]
fn sigkill_under_http_load_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, SENSORS).expect("config");
    let rounds: u64 =
        std::env::var("KAPPA_SERVE_KILL_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let acked: Arc<Mutex<Vec<(u64, u64, String)>>> = Arc::default();
    for round in 0..rounds {
        let mut server = Server::start_with(temp.path(), &config, &[], None);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|client| {
                let (url, acked, stop) = (server.url("/v1/topics/sensors/records?durability=synced&per_record=true"), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let agent = super::agent();
                    let mut batch = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let values: Vec<String> = (0..1 + batch % 40).map(|i| format!("r{round}-c{client}-b{batch}-{i}")).collect();
                        let mut body = String::new();
                        for (i, v) in values.iter().enumerate() {
                            let line = json!({ "key": format!("k{}", (batch + i as u64) % 11), "value": v });
                            body.push_str(&format!("{line}\n"));
                        }
                        let answer = agent.post(&url).header("content-type", "application/x-ndjson").send(body.as_bytes());
                        let Ok(mut response) = answer else { return }; // killed mid-request
                        if response.status() != 200 {
                            return;
                        }
                        let Ok(text) = response.body_mut().read_to_string() else { return };
                        let answer: Value = serde_json::from_str(&text).expect("json");
                        let mut acked = acked.lock().expect("lock");
                        for (v, at) in values.iter().zip(answer["records"].as_array().expect("records")) {
                            acked.push((at["partition"].as_u64().expect("p"), at["offset"].as_u64().expect("o"), v.clone()));
                        }
                        batch += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + round * 211 % 600));
        server.signal(libc::SIGKILL);
        let _ = server.wait(Duration::from_secs(10));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.join().expect("client");
        }
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 100, "only {} records were acknowledged", acked.len());
    // Restart and read every partition back: every acknowledged value at its offset.
    let server = Server::start_with(temp.path(), &config, &[], None);
    let mut stored: std::collections::BTreeMap<(u64, u64), String> = Default::default();
    for p in 0..3u64 {
        let mut offset = 0;
        loop {
            let got = server.get(&format!(
                "/v1/topics/sensors/partitions/{p}/records?offset={offset}&max_records=10000"
            ));
            assert_eq!(got.status, 200, "{got:?}");
            let records = got.body["records"].as_array().expect("records");
            if records.is_empty() {
                break;
            }
            for r in records {
                stored.insert(
                    (p, r["offset"].as_u64().expect("o")),
                    r["value"].as_str().expect("v").to_string(),
                );
            }
            offset = got.body["next_offset"].as_u64().expect("next");
        }
    }
    for (p, o, v) in &acked {
        assert_eq!(
            stored.get(&(*p, *o)),
            Some(v),
            "acknowledged record lost at partition {p} offset {o}"
        );
    }
    assert!(server.stop().success());
}

/// Regression (issue 8, lifecycle review): `kappa serve` refused to start when one view of the
/// config file could not be created; here retention moved the start of topic `old` before its
/// view `late` was configured, so a replay from offset 0 is refused (`ViewBeforeLogStart`).
/// Now the appliance starts and serves the rest (`fine`), and reports `late` as failed with its
/// typed reason: `/health` says degraded, `/v1/status` lists it, `kappa_view_failed` counts
/// it, and its routes answer 409 with the reason. Fails with `open_views`' old `?` on a create.
#[test]
fn a_view_that_cannot_start_does_not_stop_the_appliance() {
    use kappa_engine::{Durability, Engine, ProducerRecord, TopicConfig};

    let temp = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::builder()
            .data_dir(temp.path().join("data"))
            .shards(1)
            .log_config(kappa_storage::LogConfig {
                segment_size_bytes_max: 4 * 1024,
                ..kappa_storage::LogConfig::default()
            })
            .stall_probe_interval(None)
            .build()
            .expect("engine starts");
        let mut topic = TopicConfig::new(1);
        topic.retention_bytes_max = Some(8 * 1024);
        engine.create_topic("old", topic).expect("topic");
        let producer = engine.producer().with_durability(Durability::Synced);
        for chunk in 0..50 {
            let records = (0..10)
                .map(|i| ProducerRecord::new(format!("{{\"n\":{}}}", chunk * 10 + i)))
                .collect();
            producer.send_batch("old", records).expect("send");
        }
        engine.apply_retention().expect("retention");
        let start = engine.partition_offsets("old", 0).expect("offsets").start_offset;
        assert!(start > 0, "retention deleted nothing (inconclusive)");
        engine.shutdown().expect("shutdown");
    }
    let config = "[topics.old]\npartitions = 1\n\n[topics.fresh]\npartitions = 1\n\n\
                  [views.late]\ntopic = \"old\"\naggregate = \"count\"\n\n\
                  [views.fine]\ntopic = \"fresh\"\naggregate = \"count\"\n";
    let server = Server::start(temp.path(), config, &[]);

    let health = server.get("/health");
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body["status"], "degraded", "{health:?}");
    let failed = health.body["failed_views"].as_array().expect("failed views").clone();
    assert_eq!(failed.len(), 1, "{health:?}");
    assert_eq!(failed[0]["view"], "late");
    assert_eq!(failed[0]["reason"], "view_before_log_start");
    let status = server.get("/v1/status");
    assert_eq!(status.body["failed_views"][0]["view"], "late", "{status:?}");
    let late = server.get("/v1/views/late");
    assert_eq!(late.status, 409, "{late:?}");
    assert!(late.body["error"].as_str().is_some_and(|e| e.contains("view_before_log_start")));
    let fine = server.get("/v1/views/fine");
    assert_eq!(fine.status, 200, "the other view is served: {fine:?}");
    let metrics = server.get("/metrics");
    let text = metrics.body["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("kappa_view_failed{view=\"late\",reason=\"view_before_log_start\"} 1"),
        "{text}"
    );
    server.stop();
}
