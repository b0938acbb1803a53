//! A real Prometheus server (Debian's `prometheus` binary, not its system service) inside a
//! lab network namespace, scraping targets there every second with its own config and
//! storage in a scratch directory, answering PromQL over its HTTP query API. Killed, and
//! its files removed, on drop.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::labdir::LabDir;
use crate::netns::{NetNs, NetnsError};
use crate::privileged::in_ci;

/// How long Prometheus may take to answer `/-/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("prometheus in {netns}: {what}: {source}")]
    Io { netns: String, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("prometheus in {netns} was not ready within {START_TIMEOUT:?}; its log ends:\n{log}")]
    NotReady { netns: String, log: String },
    #[error("prometheus query {query:?}: {what}: {body}")]
    Query { query: String, what: String, body: String },
}

/// Whether the `prometheus` binary is installed. Under CI its absence is a failure (a
/// panic naming the package), elsewhere a note and `false`.
pub fn available(test: &str) -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("prometheus").is_file()));
    if on_path {
        return true;
    }
    assert!(!in_ci(), "{test}: needs Debian's prometheus package (cargo xtask setup); CI=true, so this is a failure");
    eprintln!("{test}: skipped, prometheus is not installed (cargo xtask setup)");
    false
}

/// One sample of an instant query's answer: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: f64,
}

/// A running server; see the module docs.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: LabDir,
    netns: String,
    netns_path: std::path::PathBuf,
    addr: SocketAddr,
}

/// A free loopback port in `netns` (bound, read and released; the namespace is the lab's
/// own, so nothing else takes it in between).
pub fn free_port(netns: &NetNs) -> Result<u16, PrometheusError> {
    let io = |what, source| PrometheusError::Io { netns: netns.name().to_owned(), what, source };
    netns
        .run_in(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()))?
        .map_err(|e| io("finding a free port", e))
}

impl Prometheus {
    /// Starts Prometheus in `netns`, scraping `targets` (host:port, path `/metrics`) as job
    /// `job` every second, and waits until it is ready.
    pub fn start(netns: &NetNs, job: &str, targets: &[SocketAddr]) -> Result<Prometheus, PrometheusError> {
        let io = |what, source| PrometheusError::Io { netns: netns.name().to_owned(), what, source };
        let dir = LabDir::create("prometheus").map_err(|e| io("creating its directory", e))?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| io("writing prometheus.yml", e))?;
        let port = free_port(netns)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| io("creating its log", e))?;
        let log2 = log.try_clone().map_err(|e| io("creating its log", e))?;
        let mut cmd = Command::new("prometheus");
        netns.command_inside(&mut cmd)?;
        let child = cmd
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| io("starting prometheus", e))?;
        let mut p =
            Prometheus { child, dir, netns: netns.name().to_owned(), netns_path: netns.path().to_owned(), addr };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if matches!(p.get("/-/ready"), Ok((200, _))) {
                return Ok(p);
            }
            if Instant::now() >= deadline || matches!(p.child.try_wait(), Ok(Some(_))) {
                return Err(PrometheusError::NotReady { netns: p.netns.clone(), log: p.log_tail() });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of Prometheus's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A `GET` of `path` from inside the namespace: status code and body.
    fn get(&self, path: &str) -> Result<(u16, String), PrometheusError> {
        let io = |what, source| PrometheusError::Io { netns: self.netns.clone(), what, source };
        let (addr, request) = (self.addr, format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr));
        let (name, path) = (&self.netns, &self.netns_path);
        let answer = thread::scope(|scope| {
            scope
                .spawn(move || -> Result<std::io::Result<Vec<u8>>, NetnsError> {
                    crate::netns::enter(name, path)?;
                    Ok((|| -> std::io::Result<Vec<u8>> {
                        let mut s = TcpStream::connect_timeout(&addr, QUERY_TIMEOUT)?;
                        s.set_read_timeout(Some(QUERY_TIMEOUT))?;
                        s.write_all(request.as_bytes())?;
                        let mut out = Vec::new();
                        s.read_to_end(&mut out)?;
                        Ok(out)
                    })())
                })
                .join()
                .unwrap_or_else(|_| Err(NetnsError::ThreadPanicked { name: name.clone() }))
        })?
        .map_err(|e| io("an HTTP request", e))?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, body.to_owned()))
    }

    /// An instant PromQL query through `/api/v1/query`: the samples of its vector result.
    pub fn query(&self, query: &str) -> Result<Vec<Sample>, PrometheusError> {
        let fail = |what: &str, body: &str| PrometheusError::Query {
            query: query.to_owned(),
            what: what.to_owned(),
            body: body.to_owned(),
        };
        let (code, body) = self.get(&format!("/api/v1/query?query={}", percent_encode(query)))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| fail(&format!("HTTP {code}, {e}"), &body))?;
        if json["status"] != "success" {
            return Err(fail("not a success", &body));
        }
        let Some(result) = json["data"]["result"].as_array() else {
            return Err(fail("no vector result", &body));
        };
        result
            .iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
                value.map(|value| Sample { labels, value }).ok_or_else(|| fail("a sample without a value", &body))
            })
            .collect()
    }

    /// Polls `query` until `done` accepts its samples or `limit` passes; the last answer.
    pub fn query_until(
        &self,
        query: &str,
        limit: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Result<Vec<Sample>, PrometheusError> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.query(query)?;
            if done(&got) || Instant::now() >= deadline {
                return Ok(got);
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The query string encoding of a PromQL expression (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_is_percent_encoded_for_the_query_string() {
        assert_eq!(percent_encode(r#"up{job="ward"} == 1"#), "up%7Bjob%3D%22ward%22%7D%20%3D%3D%201");
    }
}
