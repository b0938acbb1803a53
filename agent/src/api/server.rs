//! The agent's side of the local API: accepts connections on a root-only unix socket and
//! forwards each request to the agent's owner task, which answers through a oneshot channel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::proto::{Request, Response};

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

/// Serves until the owner task goes away.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an API connection");
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls).await {
                tracing::debug!(error = %e, "API connection");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    answer(read, write, calls, REQUEST_TIMEOUT).await
}

/// Reads one request from `read` (within `timeout`), has the owner task answer it, and
/// writes the response line to `write`. Whatever arrives gets an answer.
async fn answer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    read: R,
    mut write: W,
    calls: mpsc::Sender<Call>,
    timeout: Duration,
) -> std::io::Result<()> {
    let request = match tokio::time::timeout(timeout, read_request(read)).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout(timeout)),
    };
    let response = match request {
        Err(e) => Response::Error { message: e.to_string() },
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((req, tx)).await.is_err() {
                Response::Error { message: "the agent is shutting down".into() }
            } else {
                rx.await.unwrap_or(Response::Error { message: "the agent dropped the request".into() })
            }
        }
    };
    let mut out =
        serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"result\":\"error\",\"message\":\"encoding\"}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(input: Vec<u8>, timeout: Duration) -> (Response, Option<Request>) {
        let (calls, mut owner) = mpsc::channel::<Call>(1);
        let (mut client, server) = tokio::io::duplex(4096);
        let (server_read, server_write) = tokio::io::split(server);
        let serving = tokio::spawn(answer(server_read, server_write, calls, timeout));
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
        let serving = tokio::spawn(answer(server_read, server_write, calls, Duration::from_millis(50)));
        client.write_all(b"{\"op\":").await.expect("write");
        let mut answer = Vec::new();
        BufReader::new(&mut client).read_until(b'\n', &mut answer).await.expect("answer");
        serving.await.expect("task").expect("io");
        let resp: Response = serde_json::from_slice(&answer).expect("response");
        assert!(matches!(&resp, Response::Error { message } if message.starts_with("no request within")), "{resp:?}");
    }
}
