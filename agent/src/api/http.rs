//! The agent's HTTP endpoint (`--metrics-addr`): `/healthz` (the owner task answers),
//! `/readyz` (it can protect new pods: the DaemonSet's readiness probe, so a hand-off
//! upgrade waits for the new agent) and `/metrics` (Prometheus text format, rendered by
//! `crate::metrics::text` from the owner task's `metrics::Report`). Read-only: every answer comes
//! from the owner task through the same calls the local socket makes. One request per
//! connection, bounded in size and time; anything else gets 404 or 400.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::proto::{Request, Response};
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
        "/metrics" => match call(calls, Request::Metrics).await {
            Some(Response::Metrics(r)) => {
                response(200, crate::metrics::text::CONTENT_TYPE, &crate::metrics::text::render(&r))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The endpoint on a free loopback port, and the calls it makes of the owner task.
    async fn endpoint() -> (SocketAddr, mpsc::Receiver<Call>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, tx));
        (addr, rx)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readyz_answers_503_with_the_reason_until_the_agent_is_ready() {
        use super::super::proto::Readiness;
        let (addr, mut rx) = endpoint().await;
        tokio::spawn(async move {
            let mut ready = false;
            while let Some((_, reply)) = rx.recv().await {
                let reason = (!ready).then(|| "the datastore has not synced".to_owned());
                let _ = reply.send(Response::Readiness(Readiness { ready, datastore_synced: ready, reason }));
                ready = true;
            }
        });
        let first = get(addr, "/readyz").await;
        assert!(
            first.starts_with("HTTP/1.1 503") && first.contains("not ready: the datastore has not synced"),
            "{first}"
        );
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn metrics_serves_the_owner_tasks_report_as_exposition_text() {
        let (addr, mut rx) = endpoint().await;
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                assert_eq!(req, Request::Metrics, "/metrics asks for the metrics report");
                let mut r = crate::metrics::Report::default();
                r.status.node = "n1".into();
                let _ = reply.send(Response::Metrics(Box::new(r)));
            }
        });
        let out = get(addr, "/metrics").await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(&format!("Content-Type: {}", crate::metrics::text::CONTENT_TYPE)), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(
            body.lines().any(|l| l == "ward_drop_total{node=\"n1\",reason=\"policy_denied\",direction=\"ingress\"} 0"),
            "{body}"
        );
    }
}
