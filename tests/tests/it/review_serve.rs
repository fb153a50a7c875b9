//! Review of issue 12 (`kappa serve`, its HTTP API, metrics, admin CLI and shutdown): each defect
//! a hostile review found, written as a test that failed before its fix (each was checked
//! against the code before the fix). They run in the normal suite:
//!
//!     cargo test -p kappa-tests --test review_serve
//!
//! This file is its own test target (`tests/Cargo.toml`, `[[test]] review_serve`), with its own
//! small copy of the process helpers of `tests/it/serve`.
//!
//! Each test says what was wrong, what is expected, and how to reproduce it by hand.

// Waits have wall-clock deadlines (never a speed assertion).
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers: the real `kappa` binary started on a free port (as tests/it/serve does).

fn kappa_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kappa-it")
}

struct Serve {
    child: Child,
    base: String,
    config: PathBuf,
    stderr: PathBuf,
    token: Option<String>,
    agent: ureq::Agent,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

fn agent() -> ureq::Agent {
    ureq::config::Config::builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.expect("the request reached the server");
    let status = response.status().as_u16();
    let text =
        response.body_mut().with_config().limit(1 << 30).read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
    Answer { status, body }
}

impl Serve {
    fn start(dir: &Path, config: &str, extra: &[&str]) -> Serve {
        let path = dir.join("kappa.toml");
        std::fs::write(&path, config).expect("write the config");
        Serve::start_with(dir, &path, extra)
    }

    fn start_with(dir: &Path, config: &Path, extra: &[&str]) -> Serve {
        let data_dir = dir.join("data");
        let stderr_path = dir.join("serve.stderr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if !extra.contains(&"--http-addr") {
            args.extend(["--http-addr".to_string(), "127.0.0.1:0".to_string()]);
        }
        // The Kafka listener defaults to 9092: tests run in parallel, so each takes a free port.
        if !extra.contains(&"--kafka-addr") {
            args.extend(["--kafka-addr".to_string(), "127.0.0.1:0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(kappa_bin())
            .args(&args)
            .env("KAPPA_LOG", "info")
            .env_remove("KAPPA_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start kappa serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let base = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().expect("an address");
                        break format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1"));
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("kappa serve did not print its address ({e}); stderr:\n{log}");
                }
            }
        };
        Serve {
            child,
            base,
            config: config.to_path_buf(),
            stderr: stderr_path,
            token: None,
            agent: agent(),
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        }
    }

    fn get(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.get(self.url(path))).call())
    }

    fn delete(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.delete(self.url(path))).call())
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        answer(
            self.auth(self.agent.post(self.url(path)))
                .header("content-type", content_type)
                .send(body),
        )
    }

    fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.post(path, "application/json", body.to_string().as_bytes())
    }

    fn ndjson(&self, path: &str, lines: &[Value]) -> Answer {
        let mut body = Vec::new();
        for line in lines {
            writeln!(body, "{line}").expect("write");
        }
        self.post(path, "application/x-ndjson", &body)
    }

    fn metrics(&self) -> String {
        let got = self.get("/metrics");
        assert_eq!(got.status, 200, "{got:?}");
        got.body["text"].as_str().expect("metrics text").to_string()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// The exit status if the process exits within `limit`.
    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let status = self.wait_for_exit(Duration::from_secs(120));
        status.unwrap_or_else(|| panic!("kappa serve did not stop; stderr:\n{}", self.log()))
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `kappa ARGS` with `stdin`, killed after `limit`; returns (exit code or -1, stdout, stderr).
fn kappa(
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
    limit: Duration,
) -> (i32, String, String) {
    let mut child = Command::new(kappa_bin())
        .args(args)
        .env_remove("KAPPA_ADDR")
        .env_remove("KAPPA_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kappa");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let reader_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    (code, reader_out.join().expect("stdout"), reader_err.join().expect("stderr"))
}

/// The sum of every sample of a metric family (`name{...} value` lines, or `name value`).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Polls `check` until it holds, at most `limit`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every version of `view` has folded `records` records.
fn wait_consumed(server: &Serve, view: &str, version: u32, records: u64) {
    eventually(Duration::from_secs(120), "the view to fold everything", || {
        let got = server.get(&format!("/v1/views/{view}/versions/{version}/progress"));
        got.status == 200 && got.body["consumed"] == json!(records) && got.body["caught_up"] == true
    });
}

/// Sends raw bytes on a new connection and returns what came back (until close or 10 s).
fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request).expect("write");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// 100 records of topic `m`: key `k0`/`k1`, value `{"v": i}`, event time i.
fn hundred() -> Vec<Value> {
    (0..100u64)
        .map(|i| json!({ "key": format!("k{}", i % 2), "value": { "v": i }, "timestamp": i }))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Lost or corrupt data, wrong answers.

/// FINDING (data): a batch answered 413 was partly written. A POST whose records route to two
/// partitions is split by `Producer::send_packed_async` (engine/src/producer/mod.rs) into one
/// append per partition; each is checked against the storage limits on its shard only, so the
/// partition whose part is valid appends it while the other refuses, and the handler returns the
/// refusal (tools/src/serve/routes/records.rs: `send_packed_async(..).await?`). The client is
/// told the batch was refused, retries, and duplicates the records that were written. The 413
/// also says "record 0 of the batch" (the index inside one partition's part, not the request's
/// line) and carries no `line`/`index`.
/// Expected: all or nothing; check every record against the limits (record 1 MiB, part 16 MiB)
/// before anything is sent, and name the line.
/// Reproduce: topic with 2 partitions; POST NDJSON `{"key":A,"value":"small"}` and
/// `{"key":B,"value":"x"*1048576}` with A, B on different partitions: 413, and A's record is
/// readable with GET .../partitions/P/records.
#[test]
fn a_refused_batch_writes_nothing() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 2\n", &[]);
    let on = |p: u32| {
        (0..100)
            .map(|i| format!("key-{i}"))
            .find(|k| kappa_engine::router::partition_for_key(k.as_bytes(), 2) == p)
            .expect("a key for the partition")
    };
    let (small, big) = (on(1), on(0));
    let lines = [
        json!({ "key": small, "value": "small" }),
        json!({ "key": big, "value": "x".repeat(1 << 20) }),
    ];
    let refused = server.ndjson("/v1/topics/t/records", &lines);
    assert_eq!(refused.status, 413, "{refused:?}");
    let topic = server.get("/v1/topics/t");
    assert_eq!(
        topic.body["records"],
        json!(0),
        "a batch answered {} was partly written: {}; the refusal said: {}",
        refused.status,
        topic.body["partition_detail"],
        refused.body
    );
}

/// FINDING (wrong answers after restart): a view whose versions share a revision resumes the
/// wrong version, and its stored definition is overwritten. `revision` may be given in a
/// definition; a rebuild with the revision of an existing version but another definition is
/// accepted (engine `rebuild_view` just adds version N+1 under that revision). After a rollback to
/// version 1 and a restart, `open_views` (tools/src/serve/app.rs:225-250) re-creates the served
/// version 1 from its spec, the engine's `create_view` resumes the *highest* version with that
/// revision (version 2, with the other definition's checkpoints), and `store.put` then records
/// version 1's spec under version 2. The view answers counts where it answered sums, served
/// version 2 (the rollback is gone), and `GET /v1/views/rv` shows the sum definition for it.
/// Expected: refuse a revision that names another definition (400, field `revision`), and
/// resume exactly the version that was served.
/// Reproduce: create `rv` {sum of v, revision "x"}; rebuild {count, revision "x"}; serve version
/// 1; restart; GET /v1/views/rv/get?key=k0 gives 50 (a count) instead of 2450.
#[test]
fn a_rollback_survives_a_restart_with_the_right_definition() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.m]\npartitions = 1\n", &[]);
    assert_eq!(server.ndjson("/v1/topics/m/records?durability=synced", &hundred()).status, 200);
    let sum = json!({ "topic": "m", "aggregate": "sum", "value_field": "v", "revision": "x" });
    let created = server.post_json("/v1/views", &json!({ "name": "rv", "definition": sum }));
    assert_eq!(created.status, 201, "{created:?}");
    wait_consumed(&server, "rv", 1, 100);
    // A revision that names another definition is refused...
    let count = json!({ "topic": "m", "aggregate": "count", "revision": "x" });
    let rebuilt = server.post_json("/v1/views/rv/rebuild", &count);
    assert_eq!((rebuilt.status, rebuilt.body["field"].as_str()), (400, Some("revision")));
    // ... and one that names the same definition is a second version with that revision: after
    // a rollback and a restart, the served one (1) must come back, not the newest with the
    // revision, and the version rolled back from must not resume and swap in again.
    let rebuilt = server.post_json("/v1/views/rv/rebuild", &sum);
    assert_eq!(rebuilt.status, 202, "{rebuilt:?}");
    wait_consumed(&server, "rv", 2, 100);
    eventually(Duration::from_secs(60), "the swap", || {
        server.get("/v1/views/rv").body["served_version"] == 2
    });
    let back = server.post_json("/v1/views/rv/serve", &json!({ "version": 1 }));
    assert_eq!(back.status, 200, "{back:?}");
    let value = |s: &Serve| s.get("/v1/views/rv/get?key=k0").body["rows"][0]["value"].as_f64();
    assert_eq!(value(&server), Some(2450.0), "the sum of 0, 2, .., 98");
    let config = server.config.clone();
    assert!(server.stop().success());

    let server = Serve::start_with(temp.path(), &config, &[]);
    eventually(Duration::from_secs(60), "the view to answer", || value(&server).is_some());
    // Long enough for a resumed version 2 (100 records) to catch up and swap in.
    std::thread::sleep(Duration::from_secs(2));
    let described = server.get("/v1/views/rv");
    assert_eq!(
        (described.body["served_version"].clone(), value(&server)),
        (json!(1), Some(2450.0)),
        "after the restart the view serves another version or the wrong numbers: {}",
        described.body
    );
}

/// FINDING (wrong answers): `start_from_version` continues another version's state whatever the
/// new definition is. The engine documents that the caller must only continue a compatible state
/// (same key, window, aggregate: engine/src/view/def.rs:12); the embedded API cannot check a
/// closure, but the appliance's definitions are data, and `ViewSpec::to_def`
/// (tools/src/serve/spec.rs) checks nothing. A rebuild to `mean` from a `sum` version's
/// checkpoint is accepted, swapped in, and serves the sum as the mean.
/// Expected: 400 naming `start_from_version` when key_field, value_field, aggregate or window
/// differ from the version it starts from (or the right mean).
/// Reproduce: view `ms` {sum of v, checkpoint_every 10} over 100 records; POST rebuild
/// {mean of v, start_from_version 1}: 202, and get?key=k0 answers 2450 (the mean is 49).
#[test]
fn start_from_version_refuses_an_incompatible_definition() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.m]\npartitions = 1\n", &[]);
    assert_eq!(server.ndjson("/v1/topics/m/records?durability=synced", &hundred()).status, 200);
    let sum =
        json!({ "topic": "m", "aggregate": "sum", "value_field": "v", "checkpoint_every": 10 });
    assert_eq!(
        server.post_json("/v1/views", &json!({ "name": "ms", "definition": sum })).status,
        201
    );
    wait_consumed(&server, "ms", 1, 100);
    let mean =
        json!({ "topic": "m", "aggregate": "mean", "value_field": "v", "start_from_version": 1 });
    let rebuilt = server.post_json("/v1/views/ms/rebuild", &mean);
    if rebuilt.status == 400 {
        assert_eq!(rebuilt.body["field"], "start_from_version", "{rebuilt:?}");
        return;
    }
    assert_eq!(rebuilt.status, 202, "{rebuilt:?}");
    eventually(Duration::from_secs(60), "the swap", || {
        server.get("/v1/views/ms").body["served_version"] == 2
    });
    let got = server.get("/v1/views/ms/get?key=k0");
    assert_eq!(
        got.body["rows"][0]["value"].as_f64(),
        Some(49.0),
        "the mean of 0, 2, .., 98 is 49; the view answers {got:?}"
    );
}

/// FINDING (lost work, silently): a rebuild started over HTTP and not caught up at shutdown is
/// gone after a restart. `open_views` (tools/src/serve/app.rs:219) re-creates only the served
/// version of every stored view; the rebuilding version's spec stays in `serve/views/<v>.json`,
/// but nothing runs it: its progress URL (returned by the 202) answers 404, and the next rebuild
/// gets a new number. Config-file views are rebuilt again because their revision differs; HTTP
/// ones are not.
/// Expected: a version that was running resumes (from its checkpoints) after a restart, or the
/// restart reports that it was dropped (and the store forgets it).
/// Reproduce: 200k records, view `bv`; POST rebuild {hopping 64 s / 1 s}; SIGTERM at once;
/// restart; GET /v1/views/bv/versions/2/progress is 404.
#[test]
fn a_rebuild_in_progress_resumes_after_a_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.big]\npartitions = 2\n", &[]);
    for chunk in 0..4u64 {
        let lines: Vec<Value> = (chunk * 50_000..(chunk + 1) * 50_000)
            .map(|i| json!({ "key": format!("k{}", i % 50), "value": { "v": i }, "timestamp": i }))
            .collect();
        assert_eq!(server.ndjson("/v1/topics/big/records", &lines).status, 200);
    }
    let sum = json!({ "topic": "big", "aggregate": "sum", "value_field": "v" });
    assert_eq!(
        server.post_json("/v1/views", &json!({ "name": "bv", "definition": sum })).status,
        201
    );
    wait_consumed(&server, "bv", 1, 200_000);
    // 64 windows per record: a replay that takes seconds.
    let slow = json!({ "topic": "big", "aggregate": "max", "value_field": "v",
        "window": { "kind": "hopping", "size_ms": 64000, "hop_ms": 1000 } });
    let started = server.post_json("/v1/views/bv/rebuild", &slow);
    assert_eq!(started.status, 202, "{started:?}");
    let progress = server.get("/v1/views/bv/versions/2/progress");
    assert_eq!(progress.body["caught_up"], false, "precondition: still rebuilding: {progress:?}");
    let config = server.config.clone();
    assert!(server.stop().success());

    let server = Serve::start_with(temp.path(), &config, &[]);
    let after = server.get("/v1/views/bv/versions/2/progress");
    assert_eq!(
        after.status,
        200,
        "the rebuild (version 2) vanished across the restart: {after:?}; view: {}",
        server.get("/v1/views/bv").body
    );
}

/// FINDING (a view over HTTP and the same view embedded disagree): the appliance still reads
/// JSON with its placeholder `FieldPath` (tools/src/serve/fieldpath.rs) although the engine has
/// its real one (`operator::JsonPath`, `ViewDef::key_by_json`, docs/semantics.md section 7), and
/// the two differ: (a) as a group key, a number that is not an integer literal prints as
/// serde_json's `Value` does (`12.0`, `100.0` for `1e2`, `1.5e300`) in the appliance, and as the
/// engine documents (`12`, `100`, `1500...0`) embedded, so `{"k":12}` and `{"k":12.0}` are one
/// group embedded and two over HTTP; (b) path syntax: the appliance reads `a\.b` as the key
/// `a.b` and refuses `a\b`, the engine splits on every dot and takes backslashes literally;
/// (c) skipped records are all counted as `no_field` over HTTP (`map` returning `Option`),
/// by cause embedded (`not_a_number`, `not_json`).
/// Expected: one implementation (the engine's), so a view defined in kappa.toml or over HTTP
/// groups and aggregates exactly like the same view embedded.
/// Reproduce: this test: the same records, a view from `ViewSpec{key_field:"k"}` and one from
/// `ViewDef::key_by_json("k")` on one engine; compare the rows.
#[test]
fn a_view_over_http_groups_like_the_same_view_embedded() {
    use kappa_engine::operator::Aggregate;
    use kappa_engine::{Engine, ProducerRecord, TopicConfig, ViewDef};
    let temp = tempfile::tempdir().expect("tempdir");
    let engine = Engine::builder().data_dir(temp.path()).shards(1).build().expect("engine");
    engine.create_topic("t", TopicConfig::new(1)).expect("topic");
    let spec: kappa_tools::serve::spec::ViewSpec =
        serde_json::from_value(json!({ "topic": "t", "key_field": "k", "aggregate": "count" }))
            .expect("spec");
    let over_http = engine.create_view("http", spec.to_def().expect("def")).expect("view");
    let embedded = engine
        .create_view("embedded", ViewDef::new("t").key_by_json("k").aggregate(Aggregate::Count))
        .expect("view");
    let producer = engine.producer();
    for (i, value) in [
        r#"{"k":12}"#,
        r#"{"k":12.0}"#,
        r#"{"k":1e2}"#,
        r#"{"k":100}"#,
        r#"{"k":1.5e300}"#,
        r#"{"k":"s"}"#,
    ]
    .iter()
    .enumerate()
    {
        producer.send("t", ProducerRecord::new(*value).timestamp(i as i64)).expect("send");
    }
    for view in [&over_http, &embedded] {
        view.wait_for(view.log_end().expect("end"), Duration::from_secs(60)).expect("folded");
    }
    let keys = |rows: Vec<kappa_engine::Row>| -> Vec<(String, f64)> {
        rows.into_iter().map(|r| (String::from_utf8_lossy(&r.key).into_owned(), r.value)).collect()
    };
    let (http_rows, embedded_rows) =
        (keys(over_http.rows().expect("rows")), keys(embedded.rows().expect("rows")));
    engine.shutdown().expect("shutdown");
    assert_eq!(http_rows, embedded_rows, "the same definition groups differently over HTTP");
}

// ---------------------------------------------------------------------------------------------
// 2. Hangs, crashes, busy loops.

/// FINDING (hang): SIGTERM is not bounded when a shard is stuck. After the HTTP drain timeout
/// (`http.shutdown_timeout_ms`), `serve` calls `Engine::shutdown`,
/// which sends `Shutdown` into each shard's queue and waits for the reply with no timeout, so a
/// shard that does not get to its queue keeps the process alive indefinitely (the repo's own
/// notes record shards asleep in io_uring_enter for 20 minutes). Here the shard is held by
/// `debug.append_delay_ms = 40000` (one append in flight): with `shutdown_timeout_ms = 500` the
/// process exits ~40 s after SIGTERM; with several queued appends it is N x 40 s. The log says
/// "closing them" after the drain timeout, yet the in-flight request is answered 40 s later (the
/// runtime is only shut down after the engine). deploy/kappa.service promises an exit "within
/// http.shutdown_timeout_ms plus the engine's flush".
/// Expected: exit within a bound (drain timeout + a flush deadline), with an error exit and a
/// log line naming the shard that did not answer.
/// Reproduce: config `[debug] append_delay_ms = 40000`, `[http] shutdown_timeout_ms = 500`; POST
/// one record; SIGTERM: the process lives ~40 s.
#[test]
fn sigterm_exits_within_a_bound_when_a_shard_is_stuck() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = "[topics.t]\npartitions = 1\n[debug]\nappend_delay_ms = 40000\n\
                  [http]\nshutdown_timeout_ms = 500\n[engine]\nshutdown_timeout_ms = 3000\n";
    let mut server = Serve::start(temp.path(), config, &[]);
    let url = server.url("/v1/topics/t/records");
    let _client = std::thread::spawn(move || {
        let _ = agent()
            .post(url)
            .header("content-type", "application/x-ndjson")
            .send(&b"{\"value\":\"x\"}\n"[..]);
    });
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGTERM);
    let exited = server.wait_for_exit(Duration::from_secs(15));
    let Some(status) = exited else {
        panic!(
            "still running 15 s after SIGTERM with http.shutdown_timeout_ms = 500 and \
             engine.shutdown_timeout_ms = 3000; log:\n{}",
            server.log()
        )
    };
    // Not a clean stop: an error exit, and a log line saying why.
    assert_eq!(status.code(), Some(1), "log:\n{}", server.log());
    assert!(server.log().contains("engine.shutdown_timeout_ms"), "log:\n{}", server.log());
}

/// FINDING (hang): a shard thread that panics at start leaves `kappa serve` hung forever, not
/// listening, ignoring SIGTERM. `engine.io_memory_mib` is only checked for 0
/// (tools/src/serve/config.rs), and `mib << 20` (tools/src/serve/app.rs:156) wraps: 2^44 becomes
/// 0 ("needs at least 512 KiB", exit 1 after creating the data dir), u64::MAX becomes a huge size
/// and glommio panics (`LayoutError`, glommio sys/uring.rs:109) in `kappa-shard-0`; the engine
/// waits for that shard forever, the first SIGTERM only sets the stop flag, so the process never
/// exits (systemd kills it after TimeoutStartSec=300). `--check-config` says the file is OK.
/// Expected: `--check-config` and `serve` refuse the value (exit 2, key `engine.io_memory_mib`);
/// and a shard that dies at start fails the start (exit 1) instead of hanging.
/// Reproduce: `[engine] io_memory_mib = 18446744073709551615`; `kappa serve --config F`.
#[test]
fn a_shard_that_dies_at_start_fails_the_start() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, "[engine]\nio_memory_mib = 18446744073709551615\n").expect("config");
    let config_arg = config.display().to_string();
    let data = temp.path().join("data").display().to_string();
    let mut child = Command::new(kappa_bin())
        .args([
            "serve",
            "--config",
            &config_arg,
            "--data-dir",
            &data,
            "--http-addr",
            "127.0.0.1:0",
            "--kafka-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_secs(3));
        let after_term = child.try_wait().expect("wait");
        let _ = child.kill();
        let _ = child.wait();
        panic!("kappa serve neither served nor exited in 30 s; after SIGTERM: {after_term:?}");
    }
    let (code, _, stderr) = kappa(
        &["serve", "--config", &config_arg, "--check-config"],
        b"",
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "--check-config accepts io_memory_mib = u64::MAX: {stderr}");
}

/// FINDING (busy loop): `kappa consume` spins when the server's long polls are used up. A GET
/// with `wait_ms` holds one of `BLOCKING_THREADS / 2 = 32` permits (tools/src/serve/app.rs:52,
/// routes/records.rs `long_polls.try_acquire_owned`); without one it answers at once with no
/// records, and `kappa consume` (tools/src/admin/consume.rs) re-polls at once. On an idle topic of
/// 40 partitions, 8 threads spin: ~6,700 requests in 5 s on this 2-core VM instead of ~200. Any
/// 33 concurrent followers (several consumers) make the server and the clients spin.
/// Expected: a read that cannot wait is refused (429/503 with Retry-After) or queued, and the
/// client backs off; every wait sleeps until something can change (GUIDE).
/// Reproduce: topic with 40 partitions; `kappa consume T` for 3 s; count
/// `kappa_http_requests_total{route=".../records",method="GET"}`.
#[test]
fn an_idle_consumer_sleeps() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.wide]\npartitions = 40\n", &[]);
    let reads = |s: &Serve| {
        s.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("kappa_http_requests_total{")
                    && l.contains("partitions/{partition}/records")
                    && l.contains("method=\"GET\"")
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>()
    };
    let before = reads(&server);
    let addr = server.addr();
    let _ = kappa(&["consume", "wide"], b"", &[("KAPPA_ADDR", &addr)], Duration::from_secs(3));
    let polls = reads(&server) - before;
    // 40 partitions, 1 s long polls, 3 s: about 120 requests; 400 leaves room for start-up.
    assert!(polls < 400.0, "{polls} reads in 3 s from one idle consumer of 40 partitions");
}

/// FINDING (unusable admin command): `kappa consume` opens one connection per partition and
/// fails on the first 503, so a topic with more partitions than `http.max_connections` (default
/// 256; topics may have 4096) cannot be read at all, even with `--count 1`; while it runs it takes
/// connections from everyone else.
/// Expected: the consumer multiplexes partitions over a few connections (or retries 503).
/// Reproduce: `max_connections = 8`, topic with 12 partitions, 2 records; `kappa consume w
/// --from-beginning --count 2` exits 2 with "503 ... too many connections".
#[test]
fn consume_reads_a_topic_with_more_partitions_than_connections() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = "[topics.w]\npartitions = 12\n[http]\nmax_connections = 8\n";
    let server = Serve::start(temp.path(), config, &[]);
    let produced =
        server.ndjson("/v1/topics/w/records", &[json!({ "value": "a" }), json!({ "value": "b" })]);
    assert_eq!(produced.status, 200, "{produced:?}");
    let addr = server.addr();
    let (code, stdout, stderr) = kappa(
        &["consume", "w", "--from-beginning", "--count", "2"],
        b"",
        &[("KAPPA_ADDR", &addr)],
        Duration::from_secs(30),
    );
    assert_eq!((code, stdout.lines().count()), (0, 2), "stdout {stdout:?}, stderr {stderr}");
}

/// FINDING (admin CLI fails on ordinary input): `kappa produce` batches by line count only
/// (`--batch 1000`, tools/src/admin/produce.rs), and the engine refuses a part over 16 MiB
/// (storage `batch_size_bytes_max`), so piping 1,000 lines of 17 KB fails with 413 and nothing is
/// produced. The server itself admits 64 MiB bodies (`http.max_body_bytes`) and 100,000 records
/// (`max_batch_records`) that the engine then refuses: the advertised limits are not the real
/// ones.
/// Expected: `kappa produce` also bounds a request by bytes; the server's limits are the ones
/// that hold (or it splits a body into several engine batches).
/// Reproduce: `python3 -c 'print(("x"*17000+"\n")*1000, end="")' | kappa produce T`.
#[test]
fn produce_sends_a_file_of_17_kb_lines() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.p]\npartitions = 1\n", &[]);
    let line = "x".repeat(17_000) + "\n";
    let input = line.repeat(1000);
    let addr = server.addr();
    let (code, _, stderr) = kappa(
        &["produce", "p"],
        input.as_bytes(),
        &[("KAPPA_ADDR", &addr)],
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(server.get("/v1/topics/p").body["records"], json!(1000));
}

/// FINDING (bounded memory): request bodies have a per-request limit (64 MiB) and connections a
/// count limit (256), but nothing bounds their product: each handler buffers its whole body
/// (`axum::body::to_bytes`, routes/mod.rs `read_body`) and then copies it into a
/// `ProducerBatch::with_capacity(.., body.len())`. 256 clients that send 64 MiB slowly (within
/// `body_timeout_ms`) hold 16 GiB (32 GiB while parsing) on a 24 GiB machine. Measured here:
/// six stalled 60 MiB uploads raised the RSS from 96 MB to 465 MB.
/// Expected: a global budget for in-flight body bytes (backpressure: 503/Retry-After or slower
/// reads), so memory is bounded whatever the clients do.
/// Reproduce: 8 connections each sending the headers and 60 MiB of a 60 MiB + 1 KiB body.
#[test]
fn in_flight_bodies_have_a_memory_bound() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let before = server.rss_kib();
    let body_len = 60usize << 20;
    let line = format!("{{\"value\":\"{}\"}}\n", "x".repeat(1000));
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        let head = format!(
            "POST /v1/topics/t/records HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n\
             content-length: {}\r\n\r\n",
            body_len + 1024
        );
        stream.write_all(head.as_bytes()).expect("head");
        let mut sent = 0;
        while sent + line.len() <= body_len {
            if stream.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += line.len();
        }
        held.push(stream);
    }
    std::thread::sleep(Duration::from_secs(1));
    let grown_mib = server.rss_kib().saturating_sub(before) / 1024;
    drop(held);
    assert!(
        grown_mib < 256,
        "8 stalled uploads grew the server by {grown_mib} MiB: no global bound on buffered bodies"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Metrics.

/// FINDING (metrics): `kappa_shard_fsyncs_total` and `kappa_shard_fsync_latency_seconds` go
/// backwards when a topic is deleted. The shard's figures are summed over the partition logs it
/// owns at scrape time (engine/src/shard/mod.rs `metrics`: `fsync_count += stats.fsync_count`,
/// `fsync_latency_ns.add(..)`), so deleting a topic removes its partitions' share. Prometheus
/// reads a decreasing counter as a reset and `rate()` spikes.
/// Expected: per-shard counters monotonic for the life of the process (keep a shard total).
/// Reproduce: create topic `gone`, 3 synced POSTs, scrape, DELETE /v1/topics/gone, scrape.
#[test]
fn counters_never_go_backwards() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.keep]\npartitions = 1\n", &[]);
    let created = server.post_json("/v1/topics", &json!({ "name": "gone", "partitions": 1 }));
    assert_eq!(created.status, 201);
    for _ in 0..3 {
        let a =
            server.ndjson("/v1/topics/gone/records?durability=synced", &[json!({ "value": "s" })]);
        assert_eq!(a.status, 200);
    }
    let before = server.metrics();
    assert_eq!(server.delete("/v1/topics/gone").status, 200);
    let after = server.metrics();
    for name in ["kappa_shard_fsyncs_total", "kappa_shard_fsync_latency_seconds_count"] {
        let (b, a) = (metric_sum(&before, name), metric_sum(&after, name));
        assert!(a >= b, "{name} went from {b} to {a} when a topic was deleted");
    }
}

/// FINDING (security / metrics): label cardinality is unbounded and unauthenticated. The request
/// counter is labelled with the request's method as sent (`request.method().to_string()`,
/// routes/mod.rs `observe`), and `observe` is the outermost layer, before auth: any client, even
/// without the token, creates a new `kappa_http_requests_total{method=...}` series per made-up
/// method (`M1 /v1/topics`, `M2 ...`), kept forever. Memory grows and every scrape grows.
/// Expected: methods outside a fixed set counted as `other` (and routes already bounded).
/// Reproduce: 200 requests `Mi /v1/topics HTTP/1.1` without a token; count the series.
#[test]
fn metric_series_are_bounded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let token = "a-token-of-twenty-chars";
    let config = format!("[topics.t]\npartitions = 1\n[http]\ntoken = \"{token}\"\n");
    let mut server = Serve::start(temp.path(), &config, &[]);
    for i in 0..200 {
        let reply = raw(
            &server.addr(),
            format!("M{i} /v1/topics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        );
        assert!(reply.starts_with("HTTP/1.1 4"), "{reply}");
    }
    server.token = Some(token.to_string());
    let series =
        server.metrics().lines().filter(|l| l.starts_with("kappa_http_requests_total{")).count();
    assert!(series < 50, "{series} request series after 200 unauthenticated made-up methods");
}

/// GUARD (passes): appends at `synced` over HTTP fdatasync, and `written`/`none` do not. The
/// SIGKILL test (tests/it/serve/lifecycle.rs) cannot show it: SIGKILL keeps the page cache and
/// completed O_DIRECT writes, so it passes with the durability parameter ignored. This test fails
/// if `?durability=synced` stops reaching the storage's fdatasync.
#[test]
fn synced_over_http_fdatasyncs_and_written_does_not() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let fsyncs = |s: &Serve| metric_sum(&s.metrics(), "kappa_shard_fsyncs_total");
    let record = [json!({ "value": "r" })];
    // Let start-up syncs settle.
    std::thread::sleep(Duration::from_millis(300));
    let start = fsyncs(&server);
    for durability in ["written", "none"] {
        for _ in 0..5 {
            let a =
                server.ndjson(&format!("/v1/topics/t/records?durability={durability}"), &record);
            assert_eq!(a.status, 200, "{a:?}");
        }
    }
    let unsynced = fsyncs(&server);
    for _ in 0..5 {
        let a = server.ndjson("/v1/topics/t/records?durability=synced", &record);
        assert_eq!((a.status, a.body["durability"].as_str()), (200, Some("synced")), "{a:?}");
    }
    let synced = fsyncs(&server);
    // A background sync may fire (the unsynced bound), but not one per append.
    assert!(unsynced - start <= 2.0, "written/none appends fdatasynced: {start} -> {unsynced}");
    assert!(synced - unsynced >= 5.0, "5 synced appends, {} fdatasyncs", synced - unsynced);
    assert!(server.stop().success());
}

// ---------------------------------------------------------------------------------------------
// 4. Security.

/// FINDING (security: cross-site requests): on loopback without a token, any web page the
/// operator opens can change state: a `text/plain` POST is a CORS "simple request" (no
/// preflight), and the control-plane handlers parse the body as JSON whatever its content type
/// (`json_body` in topics::create, views::create, rebuild, serve). So a page can create topics
/// and views, start rebuilds and roll views back; record POSTs without a content type are sniffed
/// as NDJSON, so `fetch(url, {method: "POST", mode: "no-cors", body: new Blob([...])})` appends.
/// Expected: control-plane and record bodies need `application/json` / NDJSON (415 otherwise),
/// which forces a preflight the server never grants.
/// Reproduce: `curl -H 'content-type: text/plain' -d '{"name":"x","partitions":1}'
/// http://127.0.0.1:9680/v1/topics` answers 201.
#[test]
fn cross_site_simple_requests_cannot_change_state() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let created = server.post(
        "/v1/topics",
        "text/plain;charset=UTF-8",
        br#"{"name":"from-a-web-page","partitions":1}"#,
    );
    assert_eq!(created.status, 415, "a text/plain POST created a topic: {created:?}");
}

/// FINDING (security: DNS rebinding): the server answers any `Host`. Bound to loopback without a
/// token (the default), a page on attacker.example whose name re-resolves to 127.0.0.1 is
/// same-origin with the API and can read every topic and view (and write, see above).
/// Expected: without a token, requests whose Host is not the bound address, `localhost` or a
/// configured name are refused (421/403 JSON naming `host`).
/// Reproduce: `curl -H 'Host: attacker.example' http://127.0.0.1:PORT/v1/topics` answers 200.
#[test]
fn a_foreign_host_is_refused_without_a_token() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let reply = raw(
        &server.addr(),
        b"GET /v1/topics HTTP/1.1\r\nhost: attacker.example\r\nconnection: close\r\n\r\n",
    );
    assert!(!reply.starts_with("HTTP/1.1 200"), "served to a foreign Host: {reply}");
}

/// FINDING (security, low): a world-readable `http.token_file` is accepted silently, and a token
/// problem is blamed on the wrong key: an empty token file or a short `KAPPA_TOKEN` is reported
/// as key `http.token`, at the `[http]` header (tools/src/serve/config.rs: `at(&["http",
/// "token"], ..)`), although the file sets `token_file` and the environment sets the token.
/// Expected: a token file readable by others refused (exit 2, key `http.token_file`, like ssh
/// refuses a private key), and errors that name `http.token_file` / `KAPPA_TOKEN`.
/// Reproduce: `chmod 666 tok`; `[http] addr = "0.0.0.0:1"`, `token_file = "tok"`;
/// `kappa serve --config F --check-config` exits 0.
#[test]
fn token_file_problems_are_refused_and_named() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().expect("tempdir");
    let token = temp.path().join("tok");
    std::fs::write(&token, "abcdefghijklmnopqrstuvwxyz\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let config = temp.path().join("kappa.toml");
    std::fs::write(
        &config,
        format!("[http]\naddr = \"0.0.0.0:1\"\ntoken_file = \"{}\"\n", token.display()),
    )
    .expect("config");
    let check = |config: &Path| {
        kappa(
            &["serve", "--config", &config.display().to_string(), "--check-config"],
            b"",
            &[],
            Duration::from_secs(30),
        )
    };
    let (code, _, stderr) = check(&config);
    assert_eq!(code, 2, "a world-readable token file was accepted: {stderr}");
    std::fs::write(&token, "").expect("empty");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, _, stderr) = check(&config);
    assert_eq!(code, 2);
    assert!(stderr.contains("key `http.token_file`"), "the empty file is blamed on: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// 5. Config and HTTP contract (what the docs promise).

/// FINDING (config errors): syntax errors and duplicate keys name no key (`key ```). The issue
/// and README promise "an error in the file names the key, line and column"; for a duplicate
/// `threads` or a duplicate `[topics.a]` table the message is "c.toml:3:1: key `` (line 3,
/// column 1): duplicate key" (tools/src/serve/config.rs `parse`: `spans.key_at(offset)` finds no
/// key because the span-keeping parse failed too).
/// Expected: "key `http.threads`" (toml's error names the duplicate; the table is known).
/// Reproduce: `[http]\nthreads = 1\nthreads = 2\n` with --check-config.
#[test]
fn a_duplicate_key_is_named() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, "[http]\nthreads = 1\nthreads = 2\n").expect("config");
    let (code, _, stderr) = kappa(
        &["serve", "--config", &config.display().to_string(), "--check-config"],
        b"",
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("key `http.threads`"), "{stderr}");
}

/// FINDING (config checks): `--check-config` accepts values `kappa serve` then fails on after
/// creating the data dir (exit 1, not 2): `engine.cpus = [999]` (no such CPU: "Executor builder
/// error: CPU 999 doesn't exist"), `engine.io_memory_mib` of 2^44 (wraps to 0). Unchecked too:
/// `engine.shards` (any count: one thread each), `http.threads` (100,000,000 accepted),
/// `topics.*.partitions` up to u32::MAX (the HTTP API caps at 4096), `engine.cpus` duplicates,
/// `retention_bytes = 0`.
/// Expected: exit 2 naming `engine.cpus` (line, column) before the data dir exists, from
/// `--check-config` as from `serve`.
/// Reproduce: `[engine]\ncpus = [999]\n`: --check-config exits 0; serve exits 1 and leaves DIR.
#[test]
fn check_config_refuses_what_serve_cannot_start_with() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("kappa.toml");
    std::fs::write(&config, "[engine]\ncpus = [999]\n").expect("config");
    let config = config.display().to_string();
    let data = temp.path().join("data");
    let data_arg = data.display().to_string();
    let (code, _, stderr) = kappa(
        &[
            "serve",
            "--config",
            &config,
            "--data-dir",
            &data_arg,
            "--http-addr",
            "127.0.0.1:0",
            "--kafka-addr",
            "127.0.0.1:0",
        ],
        b"",
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(code, 2, "serve: {stderr}");
    assert!(!data.exists(), "the data dir was created for a config error");
    let (code, _, stderr) =
        kappa(&["serve", "--config", &config, "--check-config"], b"", &[], Duration::from_secs(30));
    assert_eq!(code, 2, "--check-config: {stderr}");
}

/// FINDING (HTTP contract): not every 4xx is JSON naming the field. A wrong method gets axum's
/// bare 405 (empty body), and a path segment that is not UTF-8 gets axum's `text/plain` 400
/// "Invalid URL: Invalid UTF-8 in `topic`" (the `Path` extractor's rejection). README: "Bad input
/// gets a 4xx with {"error", "field"}".
/// Expected: `{"error": .., "field": "method"|"topic", "status": ..}` for both.
/// Reproduce: `curl -i http://ADDR/v1/topics/t/records`; `curl -i http://ADDR/v1/topics/%ff`.
#[test]
fn every_4xx_is_json_naming_the_field() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    for (path, status) in [("/v1/topics/t/records", 405), ("/v1/topics/%ff", 400)] {
        let got = server.get(path);
        assert_eq!(got.status, status, "{path}: {got:?}");
        assert!(
            got.body["error"].is_string() && got.body["field"].is_string(),
            "{path}: not a JSON error naming a field: {got:?}"
        );
    }
}

/// FINDING (input checks, low): timestamps that no view can use are accepted. A record's
/// `timestamp` is any i64 (routes/records.rs `InRecord`); the engine's views only fold event
/// times in `EVENT_TIME_MIN..=EVENT_TIME_MAX` (engine/src/view/state.rs `apply`) and count the
/// rest as `time_out_of_range`, so `{"timestamp": -9223372036854775808}` is acknowledged 200 and
/// silently ignored by every view.
/// Expected: 400 naming `timestamp` (with the allowed range), as for any other value the system
/// cannot compute with.
/// Reproduce: POST `{"value":"x","timestamp":-9223372036854775808}`: 200.
#[test]
fn an_unusable_timestamp_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(temp.path(), "[topics.t]\npartitions = 1\n", &[]);
    let got =
        server.ndjson("/v1/topics/t/records", &[json!({ "value": "x", "timestamp": i64::MIN })]);
    assert_eq!((got.status, got.body["field"].as_str()), (400, Some("timestamp")), "{got:?}");
}
