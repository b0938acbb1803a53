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
    let mut stream = Responses::open(socket, req, timeout)?;
    stream.next_response()?.ok_or_else(|| ClientError::NoAnswer { path: socket.to_owned() })
}

/// The response lines of one request: one for most requests, a stream for a followed flow
/// query.
pub struct Responses {
    path: PathBuf,
    reader: BufReader<std::io::Take<UnixStream>>,
}

impl Responses {
    /// Connects and sends `req`; reads wait up to `timeout` for each line.
    pub fn open(socket: &Path, req: &Request, timeout: Duration) -> Result<Responses, ClientError> {
        let io = |source| ClientError::Io { path: socket.to_owned(), source };
        let mut stream =
            UnixStream::connect(socket).map_err(|source| ClientError::Connect { path: socket.to_owned(), source })?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut line =
            serde_json::to_vec(req).map_err(|source| ClientError::Decode { path: socket.to_owned(), source })?;
        line.push(b'\n');
        stream.write_all(&line).map_err(io)?;
        // The agent's answers are small (a status with many rejections is a few MB): a bound
        // keeps a broken or hostile peer from making the CNI plugin or the CLI read forever.
        Ok(Responses { path: socket.to_owned(), reader: BufReader::new(stream.take(MAX_RESPONSE_BYTES)) })
    }

    /// Waits for lines without a time limit (a follower waits for traffic); each line is
    /// still bounded by [`MAX_RESPONSE_BYTES`].
    pub fn wait_forever(&mut self) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .get_ref()
            .set_read_timeout(None)
            .map_err(|source| ClientError::Io { path: self.path.clone(), source })
    }

    /// The next response, `None` when the agent closed the connection.
    pub fn next_response(&mut self) -> Result<Option<Response>, ClientError> {
        // The bound is per line: a follower may read far more than one answer's worth.
        self.reader.get_mut().set_limit(MAX_RESPONSE_BYTES);
        let mut answer = String::new();
        let n =
            self.reader.read_line(&mut answer).map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&answer)
            .map(Some)
            .map_err(|source| ClientError::Decode { path: self.path.clone(), source })
    }
}
