//! The agent's side of the local API: accepts connections on a root-only unix socket and
//! forwards each request to the agent's owner task, which answers through a oneshot channel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::proto::{Request, Response};
use crate::flows::history::{Hub, LostSource, Query};

/// A request on its way to the owner task, with the channel for its answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// Requests larger than this are refused (a registration is well under 1 KiB).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client may take to send its request: a connection that never finishes its
/// line must not hold a task (and its buffer) forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection's request was not read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("no request within {0:?}")]
    Timeout(Duration),
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad request: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Reads one request: a line of JSON (or everything up to EOF) of at most
/// [`MAX_REQUEST_BYTES`], never reading more than one byte past that.
pub async fn read_request<R: AsyncRead + Unpin>(read: R) -> Result<Request, RequestError> {
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.len() as u64 > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge);
    }
    decode_request(&line)
}

/// Decodes one request line (any bytes: an error, never a panic).
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    Ok(serde_json::from_slice(line)?)
}

#[derive(Debug, thiserror::Error)]
#[error("listening on {path}: {source}")]
pub struct ListenError {
    path: PathBuf,
    source: std::io::Error,
}

/// Binds the socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    let err = |source| ListenError { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves until the owner task goes away. Flow queries are answered from `flows` directly.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>, flows: std::sync::Arc<Hub>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an API connection");
                continue;
            }
        };
        let calls = calls.clone();
        let flows = flows.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls, flows).await {
                tracing::debug!(error = %e, "API connection");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>, flows: std::sync::Arc<Hub>) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    answer(read, write, calls, &flows, REQUEST_TIMEOUT).await
}

/// Reads one request from `read` (within `timeout`), has the owner task answer it, and
/// writes the response line to `write`. Whatever arrives gets an answer.
async fn answer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut read: R,
    mut write: W,
    calls: mpsc::Sender<Call>,
    flows: &Hub,
    timeout: Duration,
) -> std::io::Result<()> {
    let request = match tokio::time::timeout(timeout, read_request(&mut read)).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout(timeout)),
    };
    let response = match request {
        Err(e) => Response::Error { message: e.to_string() },
        Ok(Request::Flows { last, follow, since, until, filter }) => {
            return answer_flows(&mut read, &mut write, flows, Query { last, since, until, filter }, follow).await;
        }
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((req, tx)).await.is_err() {
                Response::Error { message: "the agent is shutting down".into() }
            } else {
                rx.await.unwrap_or(Response::Error { message: "the agent dropped the request".into() })
            }
        }
    };
    write_response(&mut write, &response).await
}

async fn write_response<W: AsyncWrite + Unpin>(write: &mut W, response: &Response) -> std::io::Result<()> {
    let mut out =
        serde_json::to_vec(response).unwrap_or_else(|_| b"{\"result\":\"error\",\"message\":\"encoding\"}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await
}

/// The history's answer as one line; when following, then one line per later matching flow
/// until `until` passes or the client goes away. A follower that falls behind is told how
/// many it missed; the flow task never waits for it. A follower that hangs up ends the stream
/// at once (its end of the socket reads EOF), not at the next flow.
async fn answer_flows<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    read: &mut R,
    write: &mut W,
    hub: &Hub,
    q: Query,
    follow: bool,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let history = |a: crate::flows::history::Answer| Response::Flows {
        flows: a.flows.iter().map(|f| (**f).clone()).collect(),
        not_seen: a.not_seen,
        lost_events: a.lost_events,
    };
    if !follow {
        return write_response(write, &history(hub.query(&q))).await;
    }
    let (answer, follower) = hub.query_and_follow(&q);
    let (mut live, mut lost) = (follower.flows, follower.lost);
    let mut lost_seen = answer.lost_events;
    write_response(write, &history(answer)).await?;
    write.flush().await?;
    loop {
        let mut scratch = [0u8; 64];
        let resp = tokio::select! {
            // Nothing more is expected from the client: EOF or an error means it is gone;
            // anything else is ignored.
            n = read.read(&mut scratch) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
            got = live.recv() => match got {
                Ok(f) if q.until.is_some_and(|u| f.time > u) => return Ok(()),
                Ok(f) if q.wants(&f) => Response::Flow { flow: Box::new((*f).clone()) },
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => Response::FlowsLost { missed, source: LostSource::Reader },
                Err(RecvError::Closed) => return Ok(()),
            },
            changed = lost.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = *lost.borrow_and_update();
                let missed = now.saturating_sub(lost_seen);
                lost_seen = now;
                Response::FlowsLost { missed, source: LostSource::Kernel }
            }
        };
        write_response(write, &resp).await?;
        write.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(input: Vec<u8>, timeout: Duration) -> (Response, Option<Request>) {
        let (calls, mut owner) = mpsc::channel::<Call>(1);
        let (mut client, server) = tokio::io::duplex(4096);
        let (server_read, server_write) = tokio::io::split(server);
        let hub = Hub::new(4);
        let serving = tokio::spawn(async move { answer(server_read, server_write, calls, &hub, timeout).await });
        let owner = tokio::spawn(async move {
            let (req, reply) = owner.recv().await?;
            let _ = reply.send(Response::Deregistered { existed: false });
            Some(req)
        });
        // The request may be refused before it is all written; what matters is the answer.
        let _ = client.write_all(&input).await;
        let mut answer = Vec::new();
        let mut reader = BufReader::new(&mut client);
        reader.read_until(b'\n', &mut answer).await.expect("reading the answer");
        serving.await.expect("server task").expect("server io");
        let seen = owner.await.expect("owner task");
        (serde_json::from_slice(&answer).expect("the answer is a response"), seen)
    }

    #[tokio::test]
    async fn a_request_line_is_forwarded_and_answered() {
        let (resp, seen) = ask(b"{\"op\":\"status\"}\n".to_vec(), REQUEST_TIMEOUT).await;
        assert_eq!(seen, Some(Request::Status));
        assert_eq!(resp, Response::Deregistered { existed: false });
    }

    #[tokio::test]
    async fn garbage_oversized_and_slow_requests_get_an_error_answer_and_reach_nobody() {
        let (resp, seen) = ask(b"\xff\xfe{\n".to_vec(), REQUEST_TIMEOUT).await;
        assert!(matches!(&resp, Response::Error { message } if message.starts_with("bad request")), "{resp:?}");
        assert_eq!(seen, None);
        let huge = vec![b' '; MAX_REQUEST_BYTES as usize + 10];
        let (resp, seen) = ask(huge, REQUEST_TIMEOUT).await;
        assert_eq!(resp, Response::Error { message: format!("request larger than {MAX_REQUEST_BYTES} bytes") });
        assert_eq!(seen, None);
        // A client that sends half a line and waits: answered once the timeout passes.
        let (calls, _owner) = mpsc::channel::<Call>(1);
        let (mut client, server) = tokio::io::duplex(4096);
        let (server_read, server_write) = tokio::io::split(server);
        let hub = Hub::new(4);
        let serving =
            tokio::spawn(
                async move { answer(server_read, server_write, calls, &hub, Duration::from_millis(50)).await },
            );
        client.write_all(b"{\"op\":").await.expect("write");
        let mut answer = Vec::new();
        BufReader::new(&mut client).read_until(b'\n', &mut answer).await.expect("answer");
        serving.await.expect("task").expect("io");
        let resp: Response = serde_json::from_slice(&answer).expect("response");
        assert!(matches!(&resp, Response::Error { message } if message.starts_with("no request within")), "{resp:?}");
    }

    /// `follow`: the history's answer first, then each later matching flow on its own line,
    /// without the owner task (nobody answers `calls` here).
    #[tokio::test]
    async fn a_followed_flow_query_streams_matching_flows_after_the_history() {
        use crate::flows::filter::tests::flow;
        use crate::flows::filter::{Cond, Filter};
        use crate::flows::record::{FlowVerdict, TrafficDirection};
        let hub = Hub::new(8);
        let f = |port, v| flow("a/x", "a/y", port, v, TrafficDirection::Ingress);
        hub.push([f(1, FlowVerdict::Dropped), f(2, FlowVerdict::Forwarded)]);
        let (calls, _owner) = mpsc::channel::<Call>(1);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (server_read, server_write) = tokio::io::split(server);
        let serving = {
            let hub = hub.clone();
            tokio::spawn(async move { answer(server_read, server_write, calls, &hub, REQUEST_TIMEOUT).await })
        };
        let mut filter = Filter::default();
        filter.push(Cond::from_flag("verdict", "DROPPED").expect("filter"), false);
        let req = Request::Flows { last: None, follow: true, since: None, until: None, filter };
        let mut line = serde_json::to_vec(&req).expect("encode");
        line.push(b'\n');
        client.write_all(&line).await.expect("write");
        let mut reader = BufReader::new(client);
        let mut next = async || {
            let mut l = Vec::new();
            reader.read_until(b'\n', &mut l).await.expect("read");
            serde_json::from_slice::<Response>(&l).expect("a response line")
        };
        match next().await {
            Response::Flows { flows, not_seen, lost_events } => {
                assert_eq!(flows.iter().map(|f| f.l4.parts().2).collect::<Vec<_>>(), [1]);
                assert_eq!((not_seen, lost_events), (0, 0));
            }
            other => panic!("expected the history first, got {other:?}"),
        }
        // Pushed after the answer: the allowed one is filtered out, the drop follows.
        hub.push([f(3, FlowVerdict::Forwarded), f(4, FlowVerdict::Dropped)]);
        match next().await {
            Response::Flow { flow } => assert_eq!(flow.l4.parts().2, 4),
            other => panic!("expected the live drop, got {other:?}"),
        }
        // The kernel lost events: the follower is told how many since it last heard.
        hub.note_lost(3);
        assert_eq!(next().await, Response::FlowsLost { missed: 3, source: LostSource::Kernel });
        hub.note_lost(5);
        assert_eq!(next().await, Response::FlowsLost { missed: 2, source: LostSource::Kernel });
        // The closure borrows the reader; dropping the reader closes the client's end.
        #[expect(clippy::drop_non_drop, reason = "ends the closure's borrow of the reader")]
        drop(next);
        drop(reader);
        // The client is gone: the follow ends with no further flow to write.
        let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "a hung-up follower ends its stream at once: {ended:?}");
    }
}
