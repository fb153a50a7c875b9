//! A small blocking HTTP client for the admin commands (ureq), with the server's JSON errors.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::Conn;

/// Talks JSON to one `kappa serve`.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(conn: &Conn) -> Client {
        let base = if conn.addr.contains("://") {
            conn.addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", conn.addr.trim_end_matches('/'))
        };
        let agent = ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        Client { base, token: conn.token.clone().filter(|t| !t.is_empty()), agent }
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

    fn answer(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = response
            .with_context(|| format!("{what}: cannot reach kappa serve at {}", self.base))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .with_context(|| format!("{what}: reading the answer"))?;
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).with_context(|| {
                format!("{what}: the answer is not JSON: {}", String::from_utf8_lossy(&body))
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"].as_str().unwrap_or("(no message)");
        match value["field"].as_str() {
            Some(field) => anyhow::bail!("{what}: {status}: {message} (field `{field}`)"),
            None => anyhow::bail!("{what}: {status}: {message}"),
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.get_query(path, &[])
    }

    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut request = self.auth(self.agent.get(self.url(path)));
        for (k, v) in query {
            request = request.query(*k, v);
        }
        self.answer(&format!("GET {path}"), request.call())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(body)?;
        self.post_raw(path, &[], "application/json", &bytes)
    }

    pub fn post_raw(
        &self,
        path: &str,
        query: &[(&str, String)],
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Value> {
        let mut request =
            self.auth(self.agent.post(self.url(path))).header("content-type", content_type);
        for (k, v) in query {
            request = request.query(*k, v);
        }
        self.answer(&format!("POST {path}"), request.send(body))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.auth(self.agent.delete(self.url(path)));
        self.answer(&format!("DELETE {path}"), request.call())
    }

    /// Follows a server-sent event stream, calling `each(event, data)` until it ends or `each`
    /// returns false.
    pub fn events(
        &self,
        path: &str,
        mut each: impl FnMut(&str, Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let request =
            self.auth(self.agent.get(self.url(path))).header("accept", "text/event-stream");
        let mut response = request
            .call()
            .with_context(|| format!("GET {path}: cannot reach kappa serve at {}", self.base))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.body_mut().read_to_string().unwrap_or_default();
            anyhow::bail!("GET {path}: {status}: {body}");
        }
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let mut event = String::from("message");
        let mut data = String::new();
        for line in reader.lines() {
            let line = line.with_context(|| format!("reading the event stream {path}"))?;
            if line.is_empty() {
                if !data.is_empty() {
                    let value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                    if !each(&event, value)? {
                        return Ok(());
                    }
                }
                event = String::from("message");
                data.clear();
            } else if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        Ok(())
    }
}
