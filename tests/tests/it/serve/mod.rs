//! `kappa serve` end to end: the real binary started as a process on a free port (port 0, the
//! address read from what it prints), driven over HTTP and with signals.
//!
//! `api`: produce and query against an independent reference, bad input, auth, limits.
//! `views`: rebuild with progress, rollback, drop, delete. `lifecycle`: config errors, SIGTERM
//! drain, second signal, SIGKILL under HTTP load. `admin`: the `kappa topic|view|produce|consume`
//! commands. `external`: a real Prometheus and a real headless Chromium (ignored by default:
//! they need Debian packages; `.ci/run` installs them and runs these explicitly).

// Waits have wall-clock deadlines (never a speed assertion).
#![allow(clippy::disallowed_methods)]

mod admin;
mod api;
mod external;
mod lifecycle;
mod views;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `kappa` binary (see `tests/src/bin/kappa_it.rs`).
pub fn kappa_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kappa-it")
}

/// A running `kappa serve`.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT` of the Kafka listener (`None` when it is off).
    pub kafka: Option<String>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub stderr: PathBuf,
    pub token: Option<String>,
    agent: ureq::Agent,
}

/// An HTTP answer: status and JSON body (or the raw text under `"text"`).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The `field` a refusal names.
    pub fn field(&self) -> &str {
        self.body["field"].as_str().unwrap_or("")
    }
}

pub fn agent() -> ureq::Agent {
    ureq::config::Config::builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.expect("the request reached the server");
    let status = response.status().as_u16();
    let text = response.body_mut().with_config().limit(1 << 30).read_to_string().expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "text": text }));
    Answer { status, body }
}

impl Server {
    /// Starts `kappa serve` with `config` (TOML text) in a data dir under `dir`.
    pub fn start(dir: &Path, config: &str, extra: &[&str]) -> Server {
        let config_path = dir.join("kappa.toml");
        std::fs::write(&config_path, config).expect("write the config");
        Server::start_with(dir, &config_path, extra, None)
    }

    pub fn start_with(dir: &Path, config: &Path, extra: &[&str], token: Option<&str>) -> Server {
        let data_dir = dir.join("data");
        let stderr_path = dir.join(format!("serve-{}.stderr", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("stderr file");
        let mut args = vec![
            "serve".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if !extra.contains(&"--http-addr") {
            args.extend(["--http-addr".to_string(), "127.0.0.1:0".to_string()]);
        }
        // Tests run in parallel: never the default Kafka port.
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
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut base = None;
        let kafka = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().expect("an address");
                        // A wildcard bind is reached over loopback.
                        let addr = addr.replace("0.0.0.0", "127.0.0.1");
                        base = Some(format!("http://{addr}"));
                    }
                    if let Some(rest) = line.split("Kafka listening on ").nth(1) {
                        let addr = rest.split_whitespace().next().expect("an address");
                        break Some(addr.replace("0.0.0.0", "127.0.0.1"));
                    }
                    if line.contains("Kafka listener off") {
                        break None;
                    }
                }
                Err(e) => {
                    let threads = thread_states(child.id());
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!(
                        "kappa serve did not print its addresses ({e}); threads:\n{threads}\nstderr:\n{log}"
                    );
                }
            }
        };
        let base = base.expect("the HTTP address is printed before the Kafka one");
        Server {
            child,
            base,
            kafka,
            data_dir,
            config: config.to_path_buf(),
            stderr: stderr_path,
            token: token.map(str::to_string),
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.get(self.url(path))).call())
    }

    pub fn delete(&self, path: &str) -> Answer {
        answer(self.auth(self.agent.delete(self.url(path))).call())
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Answer {
        answer(
            self.auth(self.agent.post(self.url(path)))
                .header("content-type", content_type)
                .send(body),
        )
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.post(path, "application/json", body.to_string().as_bytes())
    }

    pub fn ndjson(&self, path: &str, lines: &[Value]) -> Answer {
        let mut body = Vec::new();
        for line in lines {
            writeln!(body, "{line}").expect("write");
        }
        self.post(path, "application/x-ndjson", &body)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("kappa serve did not exit within {limit:?}; stderr:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM and a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each thread of a process and where it sleeps (for a start that hangs).
fn thread_states(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let stack = read("stack");
        let top: Vec<&str> = stack.lines().take(4).collect();
        out.push_str(&format!("{} {} [{}]\n", read("comm").trim(), read("wchan"), top.join(" | ")));
    }
    out
}

/// Runs `kappa ARGS` to completion with `stdin`; returns (exit code, stdout, stderr).
pub fn kappa(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (i32, String, String) {
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
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let _ = out.read_to_string(&mut stdout);
    stderr.push_str(&reader.join().expect("stderr reader"));
    let _ = writer.join();
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), stdout, stderr)
}

/// A topic and a view over it, used by several tests.
pub const SENSORS: &str = r#"
[topics.sensors]
partitions = 3

[views.sums]
topic = "sensors"
key_field = "m.id"
value_field = "m.v"
aggregate = "sum"
window = { kind = "tumbling", size_ms = 1000 }
lateness_ms = 100000
"#;
