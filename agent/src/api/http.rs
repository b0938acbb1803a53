//! The agent's HTTP endpoint (`--metrics-addr`): `/healthz` (the owner task answers),
//! `/readyz` (it can protect new pods: the DaemonSet's readiness probe, so a hand-off
//! upgrade waits for the new agent) and `/metrics` (Prometheus text format: packets per
//! reason, new flows per rule, map entries, datastore state). Read-only: every answer comes
//! from the owner task through the same calls the local socket makes. One request per
//! connection, bounded in size and time; anything else gets 404 or 400.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::proto::{Request, Response, StatusReport};
use super::server::Call;

/// The request line and headers must fit in this and arrive within the timeout.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("binding the HTTP endpoint {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })
}

pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Call>) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection");
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let Ok(Some(path)) = tokio::time::timeout(REQUEST_TIMEOUT, read_path(&mut stream)).await else {
                let _ = stream.write_all(&response(400, "text/plain", "bad request\n")).await;
                return;
            };
            let answer = answer(&path, &calls).await;
            let _ = stream.write_all(&answer).await;
        });
    }
}

/// The path of a `GET` request, once its headers are in.
async fn read_path(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = std::str::from_utf8(&buf).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path).to_owned()),
        _ => None,
    }
}

async fn call(calls: &mpsc::Sender<Call>, req: Request) -> Option<Response> {
    let (tx, rx) = oneshot::channel();
    calls.send((req, tx)).await.ok()?;
    tokio::time::timeout(REQUEST_TIMEOUT, rx).await.ok()?.ok()
}

async fn answer(path: &str, calls: &mpsc::Sender<Call>) -> Vec<u8> {
    match path {
        "/healthz" => match call(calls, Request::Readiness).await {
            Some(_) => response(200, "text/plain", "ok\n"),
            None => response(503, "text/plain", "the agent does not answer\n"),
        },
        "/readyz" => match call(calls, Request::Readiness).await {
            Some(Response::Readiness(r)) if r.ready => response(200, "text/plain", "ready\n"),
            Some(Response::Readiness(r)) => {
                response(503, "text/plain", &format!("not ready: {}\n", r.reason.unwrap_or_default()))
            }
            _ => response(503, "text/plain", "the agent does not answer\n"),
        },
        "/metrics" => match call(calls, Request::Status).await {
            Some(Response::Status(s)) => response(200, "text/plain; version=0.0.4", &metrics(&s)),
            _ => response(503, "text/plain", "the agent does not answer\n"),
        },
        _ => response(404, "text/plain", "not found\n"),
    }
}

fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The status report in Prometheus's text format.
pub fn metrics(s: &StatusReport) -> String {
    let mut out = String::new();
    let node = label(&s.node);
    let _ = writeln!(
        out,
        "# HELP ward_packets_total Packets the datapath decided, by reason.\n# TYPE ward_packets_total counter"
    );
    for (reason, n) in &s.reason_counters {
        let _ = writeln!(out, "ward_packets_total{{node=\"{node}\",reason=\"{}\"}} {n}", label(reason));
    }
    let _ = writeln!(
        out,
        "# HELP ward_rule_flows_total New flows a policy rule allowed.\n# TYPE ward_rule_flows_total counter"
    );
    for r in &s.rule_counters {
        let _ = writeln!(
            out,
            "ward_rule_flows_total{{node=\"{node}\",policy=\"{}\",direction=\"{}\",rule=\"{}\"}} {}",
            label(&r.policy),
            label(&r.direction),
            r.index,
            r.flows
        );
    }
    let _ = writeln!(out, "# HELP ward_map_entries Entries in each BPF map.\n# TYPE ward_map_entries gauge");
    for (map, n) in &s.map_entries {
        let _ = writeln!(out, "ward_map_entries{{node=\"{node}\",map=\"{}\"}} {n}", label(map));
    }
    let gauges = [
        ("ward_endpoints", "Local pods protected.", s.endpoints),
        ("ward_pods", "Pods the datastore holds.", s.pods),
        ("ward_policies", "Policies in force.", s.policies),
        ("ward_identities", "Label identities allocated.", s.identities),
        ("ward_rejected_objects", "Objects rejected as invalid.", s.rejected.len()),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{node}\"}} {v}");
    }
    let synced = u8::from(s.datastore_health.not_synced.is_none());
    let reachable = u8::from(s.datastore_health.unreachable_since.is_none());
    let _ = writeln!(
        out,
        "# HELP ward_datastore_synced Whether the datastore has been listed in full.\n# TYPE ward_datastore_synced gauge\nward_datastore_synced{{node=\"{node}\"}} {synced}"
    );
    let _ = writeln!(
        out,
        "# HELP ward_datastore_reachable Whether the datastore's source answers.\n# TYPE ward_datastore_reachable gauge\nward_datastore_reachable{{node=\"{node}\"}} {reachable}"
    );
    let _ = writeln!(
        out,
        "# HELP ward_datastore_listings_total Full listings per kind (relists after 410 Gone included).\n# TYPE ward_datastore_listings_total counter"
    );
    for (kind, n) in &s.datastore_health.listings {
        let _ = writeln!(out, "ward_datastore_listings_total{{node=\"{node}\",kind=\"{}\"}} {n}", label(kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let mut s = StatusReport { node: "n\"1".into(), pods: 3, ..StatusReport::default() };
        s.reason_counters.insert("policy_denied".into(), 7);
        s.datastore_health.listings.insert("Pod".into(), 2);
        let m = metrics(&s);
        assert!(m.contains("ward_packets_total{node=\"n\\\"1\",reason=\"policy_denied\"} 7"), "{m}");
        assert!(m.contains("ward_pods{node=\"n\\\"1\"} 3"));
        assert!(m.contains("ward_datastore_listings_total{node=\"n\\\"1\",kind=\"Pod\"} 2"));
        assert!(m.contains("ward_datastore_synced{node=\"n\\\"1\"} 1"));
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.rsplit(' ').next().is_some_and(|v| v.parse::<f64>().is_ok()), "{line}");
        }
    }

    #[tokio::test]
    async fn readyz_answers_503_with_the_reason_until_the_agent_is_ready() {
        use super::super::proto::Readiness;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            let mut ready = false;
            while let Some((_, reply)) = rx.recv().await {
                let reason = (!ready).then(|| "the datastore has not synced".to_owned());
                let _ = reply.send(Response::Readiness(Readiness { ready, datastore_synced: ready, reason }));
                ready = true;
            }
        });
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let first = get("/readyz").await;
        assert!(
            first.starts_with("HTTP/1.1 503") && first.contains("not ready: the datastore has not synced"),
            "{first}"
        );
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
