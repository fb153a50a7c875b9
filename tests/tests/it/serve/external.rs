//! `kappa serve` seen by real outside tools: a Prometheus server scraping `/metrics` (checked
//! through Prometheus's own query API), and a headless Chromium loading the status page (a
//! screenshot kept in the test output dir, the rendered DOM checked).
//!
//! Both need Debian packages a newcomer may not have (`prometheus`, `chromium`), so they are
//! ignored by default; `.ci/run` installs the packages and runs them with `--ignored`. Run
//! without the tool, they fail (they never pass by skipping).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{Server, SENSORS};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn tool(name: &str, package: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = format!("{dir}/{name}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{name} is not installed: this test needs the Debian package `{package}` (.ci/run installs it)");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs prometheus (Debian package): run by .ci/run"]
fn prometheus_scrapes_kappa_serve() {
    let prometheus = tool("prometheus", "prometheus");
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), SENSORS, &[]);
    let lines: Vec<serde_json::Value> = (0..1234)
        .map(|i| json!({ "value": { "m": { "id": "a", "v": i } }, "timestamp": i }))
        .collect();
    assert_eq!(server.ndjson("/v1/topics/sensors/records?durability=synced", &lines).status, 200);
    let target = server.base.trim_start_matches("http://").to_string();
    let config = temp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: kappa\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus config");
    let port = free_port();
    let _prometheus = KillOnDrop(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", temp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(temp.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    let agent = super::agent();
    let query = "sum(kappa_partition_end_offset{topic=\"sensors\"})";
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        let answer = agent
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query("query", query)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string());
        if let Ok(text) = answer {
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if body["status"] == "success" && body["data"]["result"][0]["value"][1] == "1234" {
                break;
            }
            last = text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never returned 1234 for {query}; last answer: {last}; log: {}",
            std::fs::read_to_string(temp.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The target is healthy in Prometheus's eyes, and histograms parse.
    let targets: serde_json::Value = serde_json::from_str(
        &agent
            .get(format!("http://127.0.0.1:{port}/api/v1/targets"))
            .call()
            .expect("targets")
            .body_mut()
            .read_to_string()
            .expect("text"),
    )
    .expect("json");
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets}");
    let buckets = agent
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query("query", "sum(kappa_shard_append_ack_latency_seconds_count)")
        .call()
        .expect("query")
        .body_mut()
        .read_to_string()
        .expect("text");
    assert!(buckets.contains("\"success\""), "{buckets}");
    assert!(server.stop().success());
}

#[test]
#[ignore = "needs chromium (Debian package): run by .ci/run"]
fn the_status_page_renders_in_headless_chromium() {
    let chromium = tool("chromium", "chromium");
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(temp.path(), SENSORS, &[]);
    let lines: Vec<serde_json::Value> = (0..5000)
        .map(|i| json!({ "value": { "m": { "id": format!("s{}", i % 3), "v": i % 50 } }, "timestamp": i }))
        .collect();
    assert_eq!(server.ndjson("/v1/topics/sensors/records", &lines).status, 200);
    // A rebuilt version, so the page shows two versions with progress bars.
    let def = json!({ "topic": "sensors", "key_field": "m.id", "value_field": "m.v", "aggregate": "max", "revision": "max" });
    assert_eq!(server.post_json("/v1/views/sums/rebuild", &def).status, 202);
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-status-page");
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let screenshot = out_dir.join("status.png");
    let _ = std::fs::remove_file(&screenshot);
    let chrome = |extra: &[String]| {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(&chromium);
        command.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            "--virtual-time-budget=4000",
        ]);
        command.arg(format!("--user-data-dir={}", profile.path().display()));
        command.args(extra);
        command.arg(server.url("/"));
        let output = command.stdin(Stdio::null()).output().expect("run chromium");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    chrome(&[format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a real screenshot");
    eprintln!("status page screenshot: {}", screenshot.display());
    let dom = chrome(&["--dump-dom".to_string()]);
    std::fs::write(out_dir.join("status.html"), &dom).expect("keep the DOM");
    // The script ran (the body counts its refreshes) and filled every table from the server.
    assert!(dom.contains("data-updates=\""), "the page never refreshed itself: {dom}");
    assert!(dom.contains("data-topic=\"sensors\""), "{dom}");
    assert!(dom.contains("5000"), "the record count is not shown: {dom}");
    assert!(dom.contains("data-view=\"sums\" data-version=\"1\""), "{dom}");
    assert!(dom.contains("data-view=\"sums\" data-version=\"2\""), "{dom}");
    assert!(dom.contains("class=\"bar"), "no progress bar: {dom}");
    assert!(
        dom.contains("within budget") || dom.contains("over budget"),
        "no latency budget: {dom}"
    );
    assert!(dom.contains("not served yet"), "{dom}");
    assert!(server.stop().success());
}
