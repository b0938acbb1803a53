//! Blocking client of the local API (the CNI plugin and the CLI are short-lived processes
//! that make one call; no runtime needed).

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the ward agent at {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to the ward agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the ward agent at {path} sent an unreadable response: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("the ward agent at {path} closed the connection without answering")]
    NoAnswer { path: PathBuf },
}

/// The most a client reads of one answer.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// Sends one request and waits (up to `timeout`) for its response.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut stream =
        UnixStream::connect(socket).map_err(|source| ClientError::Connect { path: socket.to_owned(), source })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|source| ClientError::Decode { path: socket.to_owned(), source })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    // The agent's answers are small (a status with many rejections is a few MB): a bound
    // keeps a broken or hostile peer from making the CNI plugin or the CLI read forever.
    let mut reader = BufReader::new(stream.take(MAX_RESPONSE_BYTES));
    let mut answer = String::new();
    let n = reader.read_line(&mut answer).map_err(io)?;
    if n == 0 {
        return Err(ClientError::NoAnswer { path: socket.to_owned() });
    }
    serde_json::from_str(&answer).map_err(|source| ClientError::Decode { path: socket.to_owned(), source })
}
